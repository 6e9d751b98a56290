#!/usr/bin/env bash
# One-shot, idempotent set-up of a taco_ros checkout on Debian 12 (no system ROS, GPU optional).
#
# ROS_DISTRO=kilted (default; the README's `make test` / `make demo`):
#   1. Debian packages (PortAudio, ALSA tools, sox, espeak-ng, a C++ tool chain for the message build)
#   2. .venv/ with the pinned Python dependencies of requirements.txt (Python 3.11, numpy 2)
#   3. the ROS 2 wheels' CMake defect fixed inside .venv/
#   4. a colcon build of taco_msgs and taco_ros into build/ install/ log/ at the repository root
# ROS_DISTRO=jazzy (`make test ROS_DISTRO=jazzy`): the Jazzy lane in .jazzy/, a robot install rehearsed:
#   1. the same Debian packages
#   2. .jazzy/usr: a copy of Python 3.12 standing in for Ubuntu 24.04's system Python, with the python3-*
#      packages apt gives a ROS robot (requirements-jazzy-system.txt: numpy 1.26, opencv 4.6, colcon ...)
#   3. .jazzy/opt/ros/jazzy: the ros-jazzy-* wheels laid out as /opt/ros/jazzy, with a setup.bash
#   4. the commands of the README's "Run it on a robot" section, run as written on top of those two
#      (see robot_commands for the few substitutions), in .jazzy/taco_ws: venv, pip, colcon
# Each step is skipped when its inputs have not changed since it last succeeded (stamps in .stamps/).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROS_DISTRO=${ROS_DISTRO:-kilted}
VENV="$ROOT/.venv"
STAMPS="$ROOT/.stamps"
PYTHON_BIN=${PYTHON:-python3.11}
APT_PACKAGES=(libportaudio2 alsa-utils libasound2-plugins sox espeak-ng cmake g++ make git)
# Jazzy lane
LANE="$ROOT/.jazzy"
LANE_PYTHON=${JAZZY_PYTHON:-python3.12}      # Ubuntu 24.04's Python version
SYSTEM="$LANE/usr"                           # stands in for /usr (the system Python)
ROS_PREFIX="$LANE/opt/ros/jazzy"             # stands in for /opt/ros/jazzy
WORKSPACE="$LANE/taco_ws"                    # the README's ~/taco_ws
mkdir -p "$STAMPS"

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

# Hash of the files a step depends on: a step re-runs only when one of them changed.
inputs_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }
step_done() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
mark_done() { echo "$2" > "$STAMPS/$1"; }
sources_hash() {
    find taco_msgs taco_ros -type f \( -name '*.msg' -o -name '*.srv' -o -name 'CMakeLists.txt' \
        -o -name 'package.xml' -o -name 'setup.py' -o -name 'setup.cfg' -o -path '*/launch/*' \
        -o -path '*/config/*' -o -path '*/scripts/*' \) -print0 | sort -z | xargs -0 cat | sha256sum \
        | cut -d' ' -f1
}

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

# The ROS wheels' exported CMake targets name include directories of the machine that built them
# (/opt/python/cpXY-cpXY/...). Point them at those of the Python $1 (its headers and its numpy's).
fix_wheel_cmake_paths() {
    local python=$1 share=$2 py_inc np_inc tag minor files
    py_inc=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    np_inc=$("$python" -c 'import numpy; print(numpy.get_include())')
    minor=$("$python" -c 'import sys; print(sys.version_info[1])')
    tag="cp3$minor-cp3$minor"
    files=$(grep -rl "/opt/python/$tag" "$share" --include='*.cmake' 2>/dev/null || true)
    [[ -z "$files" ]] && return
    log "rewriting build-machine include paths in $(echo "$files" | wc -l) CMake files of the ROS wheels"
    # numpy's path first: it is longer and contains the Python prefix (the wheels: numpy 2, numpy/_core).
    echo "$files" | xargs sed -i \
        -e "s#/opt/python/$tag/lib/python3.$minor/site-packages/numpy/_core/include#${np_inc}#g" \
        -e "s#/opt/python/$tag/include/python3.$minor#${py_inc}#g"
}

# ------------------------------------------------------------------------------------ Kilted lane
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

build_workspace() {
    local hash
    hash=$(sources_hash)
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

setup_kilted() {
    install_python_packages
    fix_wheel_cmake_paths "$VENV/bin/python" "$VENV/share"
    build_workspace
    log "Kilted lane ready: source install/setup.bash (or run make test / make demo)"
}

# ------------------------------------------------------------------------------------ Jazzy lane
# The installation prefix of a Python 3.12 ($JAZZY_PYTHON, python3.12 on PATH, or pyenv's).
python312_prefix() {
    local candidate
    for candidate in "$LANE_PYTHON" python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            "$candidate" -c 'import sys; print(sys.base_prefix)'
            return
        fi
    done
    echo 'the Jazzy lane needs Python 3.12 (set JAZZY_PYTHON)' >&2
    exit 1
}

# A copy of Python 3.12 that is an installation of its own (not a venv): a venv made from it with
# --system-site-packages sees its site-packages as a venv on Ubuntu sees /usr/lib/python3/dist-packages.
make_system_python() {
    local hash base
    hash=$(inputs_hash requirements-jazzy-system.txt)
    step_done jazzy-system "$hash" && [[ -x "$SYSTEM/bin/python3" ]] && return
    base=$(python312_prefix)
    log "Jazzy lane: system Python (a copy of $base) with Ubuntu 24.04's python3-* packages"
    rm -rf "$LANE" && mkdir -p "$LANE"
    touch "$LANE/COLCON_IGNORE"     # colcon at the repository root must not crawl the lane
    cp -a "$base" "$SYSTEM"
    rm -rf "$SYSTEM"/lib/python3.12/test "$SYSTEM"/lib/python3.12/site-packages/*
    "$SYSTEM/bin/python3" -m ensurepip > /dev/null
    "$SYSTEM/bin/python3" -m pip install -q --disable-pip-version-check -r requirements-jazzy-system.txt
    # On Ubuntu this marker stands for apt: plain `pip install` into the system Python is refused.
    printf '[externally-managed]\nError=The Jazzy lane system Python stands in for Ubuntu: use a venv.\n' \
        > "$SYSTEM/lib/python3.12/EXTERNALLY-MANAGED"
    mark_done jazzy-system "$hash"
}

make_ros_prefix() {
    local hash
    hash=$(inputs_hash requirements-jazzy-ros.txt requirements-jazzy-system.txt)
    if ! step_done jazzy-ros "$hash" || [[ ! -d "$ROS_PREFIX/share" ]]; then
        log "Jazzy lane: ros-jazzy-* wheels laid out as /opt/ros/jazzy in $ROS_PREFIX"
        rm -rf "$ROS_PREFIX"
        "$SYSTEM/bin/python3" -m pip install -q --disable-pip-version-check --break-system-packages \
            --no-warn-script-location --prefix "$ROS_PREFIX" -r requirements-jazzy-ros.txt
        fix_wheel_cmake_paths "$SYSTEM/bin/python3" "$ROS_PREFIX/share"
        mark_done jazzy-ros "$hash"
    fi
    write_ros_setup
}

# What /opt/ros/jazzy/setup.bash gives a shell, for the stand-in; its setup.bash also puts the stand-in
# /usr/bin first on PATH, so that `python3` is the system Python 3.12 as on Ubuntu 24.04. (A workspace's
# install/setup.bash re-sources local_setup.bash, which must not push the venv's python back.)
write_ros_setup() {
    local site="$ROS_PREFIX/lib/python3.12/site-packages" libs
    libs=$(find "$site" -maxdepth 1 -name 'ros_*.libs' -type d | sort | paste -sd:)
    {
        echo '# Generated by scripts/setup.sh: what /opt/ros/jazzy/setup.bash sets, for the stand-in.'
        echo 'export ROS_DISTRO=jazzy ROS_VERSION=2 ROS_PYTHON_VERSION=3'
        echo "export PATH=\"$ROS_PREFIX/bin\${PATH:+:\$PATH}\""
        echo "export PYTHONPATH=\"$site\${PYTHONPATH:+:\$PYTHONPATH}\""
        echo "export LD_LIBRARY_PATH=\"$ROS_PREFIX/lib:$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
        echo "export AMENT_PREFIX_PATH=\"$ROS_PREFIX\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}\""
        echo "export CMAKE_PREFIX_PATH=\"$ROS_PREFIX\${CMAKE_PREFIX_PATH:+:\$CMAKE_PREFIX_PATH}\""
        echo '# The wheels re-execute Python to set LD_LIBRARY_PATH unless told it is set (it is, above).'
        echo 'export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1'
    } > "$ROS_PREFIX/local_setup.bash"
    {
        echo '# Generated by scripts/setup.sh. The stand-in /usr/bin first: python3 is the system Python.'
        echo "export PATH=\"$SYSTEM/bin\${PATH:+:\$PATH}\""
        echo "source \"$ROS_PREFIX/local_setup.bash\""
    } > "$ROS_PREFIX/setup.bash"
}

# The README's robot commands: the first bash block after its robot-commands marker, made to run here.
# - Lines that install Ubuntu packages (sudo apt-get, rosdep install) are left out: this is Debian
#   without the ROS apt repository. The stand-ins hold what they install, and test_rosdep.py holds
#   every rosdep key of package.xml against the recorded rosdep database.
# - /opt/ros/jazzy, ~/taco_ws and <this repository> name the lane's stand-ins and a repository of
#   this working tree as it is (committed or not).
robot_commands() {
    awk '/<!-- robot-commands/ {on=1} on && /^```bash/ {block=1; next} block && /^```/ {exit} block' \
        README.md \
        | grep -v -E '^[[:space:]]*(sudo apt-get|rosdep install)' \
        | sed -e "s#/opt/ros/jazzy#$ROS_PREFIX#g" -e "s#~/taco_ws#$WORKSPACE#g" \
              -e "s#<this repository>#$LANE/taco_ros.git#g"
}

# pip may resolve the README's ranges differently tomorrow: the lane pins today's answer (pip reads
# PIP_CONSTRAINT as if --constraint were given, so the README's commands stay as written).
lane_pip_env() {
    echo PIP_DISABLE_PIP_VERSION_CHECK=1
    [[ -f requirements-jazzy-lock.txt ]] && echo "PIP_CONSTRAINT=$ROOT/requirements-jazzy-lock.txt"
    return 0
}

run_robot_commands() {
    local hash script="$LANE/robot-commands.sh"
    hash=$(cat README.md requirements-robot.txt requirements-test.txt requirements-jazzy-*.txt \
        | sha256sum | cut -d' ' -f1)
    step_done jazzy-robot "$hash" && [[ -f "$WORKSPACE/install/setup.bash" ]] && return
    { echo 'set -exo pipefail'; robot_commands; } > "$script"
    log "Jazzy lane: the README's robot commands ($script)"
    rm -rf "$WORKSPACE"
    snapshot_working_tree "$LANE/taco_ros.git"
    # shellcheck disable=SC2046
    env -u VIRTUAL_ENV -u PYTHONPATH -u AMENT_PREFIX_PATH -u CMAKE_PREFIX_PATH -u COLCON_PREFIX_PATH \
        -u LD_LIBRARY_PATH $(lane_pip_env) bash "$script"
    # The point of the exercise: the robot keeps the system's numpy 1.26; pip added no second one.
    if find "$WORKSPACE/venv/lib" -maxdepth 3 -name numpy -type d | grep -q .; then
        echo 'pip installed numpy into the robot venv: requirements-robot.txt lets it' >&2
        exit 1
    fi
    # shellcheck disable=SC2046
    env $(lane_pip_env) "$WORKSPACE/venv/bin/python" -m pip install -q -r requirements-test.txt
    mark_done jazzy-robot "$hash"
    mark_done jazzy-colcon "$(sources_hash)"
}

# A repository holding the working tree's files as one commit: what `git clone <this repository>` gets.
snapshot_working_tree() {
    local repo=$1
    rm -rf "$repo" && git init -q "$repo"
    git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$repo"
    git -C "$repo" add -A
    git -C "$repo" -c user.name=setup -c user.email=setup@localhost commit -q -m 'working tree'
}

# Later runs: the working tree's files into the lane's clone, then the README's build command again
# when a built file changed (Python files are symlink-installed).
refresh_lane_sources() {
    local clone="$WORKSPACE/src/taco_ros" hash
    git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$clone"
    hash=$(sources_hash)
    step_done jazzy-colcon "$hash" && return
    log "Jazzy lane: colcon build (sources changed)"
    (cd "$WORKSPACE" && env -u PYTHONPATH -u AMENT_PREFIX_PATH -u CMAKE_PREFIX_PATH -u VIRTUAL_ENV \
        bash -c "source '$ROS_PREFIX/setup.bash' && source venv/bin/activate \
                 && python -m colcon build --symlink-install --event-handlers console_cohesion-")
    mark_done jazzy-colcon "$hash"
}

setup_jazzy() {
    make_system_python
    make_ros_prefix
    run_robot_commands
    refresh_lane_sources
    log "Jazzy lane ready: source $ROS_PREFIX/setup.bash, $WORKSPACE/venv/bin/activate," \
        "$WORKSPACE/install/setup.bash"
}

start=$(date +%s)
install_debian_packages
case "$ROS_DISTRO" in
    kilted) setup_kilted ;;
    jazzy) setup_jazzy ;;
    *) echo "ROS_DISTRO must be kilted or jazzy, got '$ROS_DISTRO'" >&2; exit 2 ;;
esac
log "ready in $(( $(date +%s) - start )) s"
