#!/usr/bin/env bash
# One-shot, idempotent set-up of a taco_ros checkout on Debian 12 (no system ROS, GPU optional):
#   1. Debian packages (PortAudio, ALSA tools, sox, espeak-ng, a C++ tool chain for the message build)
#   2. .venv/ with the pinned Python dependencies of requirements.txt
#   3. the ROS 2 wheels' CMake defect fixed inside .venv/
#   4. a colcon build of taco_msgs and taco_ros into build/ install/ log/ at the repository root
# Each step is skipped when its inputs have not changed since it last succeeded (stamps in .stamps/).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV="$ROOT/.venv"
STAMPS="$ROOT/.stamps"
PYTHON_BIN=${PYTHON:-python3.11}
APT_PACKAGES=(libportaudio2 alsa-utils libasound2-plugins sox espeak-ng cmake g++ make)
mkdir -p "$STAMPS"

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

# Hash of the files a step depends on: a step re-runs only when one of them changed.
inputs_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }
step_done() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
mark_done() { echo "$2" > "$STAMPS/$1"; }

install_debian_packages() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    log "installing Debian packages: ${missing[*]}"
    local sudo=()
    [[ $(id -u) -ne 0 ]] && sudo=(sudo)
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

install_python_packages() {
    local hash
    hash=$(inputs_hash requirements.txt)
    step_done venv "$hash" && [[ -x "$VENV/bin/python" ]] && return
    if [[ ! -x "$VENV/bin/python" ]]; then
        command -v "$PYTHON_BIN" >/dev/null || PYTHON_BIN=python3
        log "creating $VENV with $($PYTHON_BIN --version)"
        "$PYTHON_BIN" -m venv "$VENV"
    fi
    log "installing pinned Python packages (requirements.txt); the first time downloads ~6 GB"
    "$VENV/bin/python" -m pip install -q --upgrade pip==26.3
    # Lines marked "no-deps" are installed without their declared dependencies (see requirements.txt).
    grep -v '# no-deps' requirements.txt > "$STAMPS/requirements-deps.txt"
    grep '# no-deps' requirements.txt | sed 's/#.*//' > "$STAMPS/requirements-nodeps.txt"
    "$VENV/bin/python" -m pip install -q -r "$STAMPS/requirements-deps.txt"
    "$VENV/bin/python" -m pip install -q --no-deps -r "$STAMPS/requirements-nodeps.txt"
    mark_done venv "$hash"
}

# The ROS wheels' exported CMake targets name include directories of the machine that built them.
# Point them at this venv's Python and numpy include directories.
fix_wheel_cmake_paths() {
    local py_inc np_inc files
    py_inc=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    np_inc=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
    files=$(grep -rl '/opt/python/cp311-cp311' "$VENV/share" --include='*.cmake' 2>/dev/null || true)
    [[ -z "$files" ]] && return
    log "rewriting build-machine include paths in $(echo "$files" | wc -l) CMake files of the ROS wheels"
    # numpy's path first: it is longer and contains the Python prefix.
    echo "$files" | xargs sed -i \
        -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#${np_inc}#g" \
        -e "s#/opt/python/cp311-cp311/include/python3.11#${py_inc}#g"
}

build_workspace() {
    local hash
    hash=$(find taco_msgs taco_ros -type f \( -name '*.msg' -o -name '*.srv' -o -name 'CMakeLists.txt' \
        -o -name 'package.xml' -o -name 'setup.py' -o -name 'setup.cfg' -o -path '*/launch/*' \
        -o -path '*/config/*' -o -path '*/scripts/*' \) -print0 | sort -z | xargs -0 cat | sha256sum | cut -d' ' -f1)
    step_done colcon "$hash" && [[ -f install/setup.bash ]] && return
    log "colcon build (taco_msgs, taco_ros)"
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    export CMAKE_PREFIX_PATH="$VENV" AMENT_PREFIX_PATH="$VENV"
    # --symlink-install: the installed Python package points at the sources, so edits need no rebuild.
    colcon build --symlink-install --event-handlers console_cohesion- \
        --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF
    mark_done colcon "$hash"
}

start=$(date +%s)
install_debian_packages
install_python_packages
fix_wheel_cmake_paths
build_workspace
log "ready in $(( $(date +%s) - start )) s: source install/setup.bash (or run make test / make demo)"
