# taco_ros: every job starts with the idempotent set-up (Debian packages, .venv, colcon build).
# ROS_DISTRO=kilted (default): .venv + install/ at the repository root (Python 3.11, numpy 2).
# ROS_DISTRO=jazzy: the Jazzy lane in .jazzy/ (Python 3.12, numpy 1.26, the README's robot install).
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROS_DISTRO ?= kilted
ROS_ENV := source install/setup.bash
PYTEST_ARGS ?=
DEMO_ARGS ?=
PYTEST := python -m pytest -ra --timeout=1200 $(PYTEST_ARGS)
# The Jazzy lane runs the suite in its workspace's clone, as a robot that ran the README would: the
# robot-facing tests (nodes over DDS, bags, launch, the robot install, rosdep, RViz), whose windows run
# the whole pipeline on Jazzy's Python 3.12 and numpy 1.26. The method's own tests (solver, encoders,
# FC-CLIP, eval) run on the Kilted lane only: together the two lanes fit CI's 90 minutes.
JAZZY_TESTS ?= ros or robot
JAZZY_ENV := source .jazzy/opt/ros/jazzy/setup.bash && source .jazzy/taco_ws/venv/bin/activate \
	&& source .jazzy/taco_ws/install/setup.bash && cd .jazzy/taco_ws/src/taco_ros

.PHONY: help setup test test-loaded lint demo bench clean

help:
	@echo "make demo   set up, then the demo (synthetic bag -> bag process, the node's window path -> pictures, table)"
	@echo "make test   set up, then lint and run the whole test suite"
	@echo "make setup  only the set-up (scripts/setup.sh)"
	@echo "make bench  run the benchmarks in bench/ (prints tables and ratios)"
	@echo "make lint   ruff"
	@echo "make test-loaded  the suite three times while stress-ng loads every core (a busy laptop)"
	@echo "ROS_DISTRO=jazzy (make test ROS_DISTRO=jazzy): the same on the Jazzy lane"

setup:
	ROS_DISTRO=$(ROS_DISTRO) bash scripts/setup.sh

lint: setup
ifeq ($(ROS_DISTRO),jazzy)
	@echo "lint runs on the Kilted lane (same sources)"
else
	.venv/bin/ruff check .
endif

test: lint
ifeq ($(ROS_DISTRO),jazzy)
	$(JAZZY_ENV) && $(PYTEST) -m "$(JAZZY_TESTS)"
else
	$(ROS_ENV) && .venv/bin/$(PYTEST)
endif

# The suite must hold on a busy machine: run it three times while stress-ng keeps every core busy.
test-loaded: setup
	command -v stress-ng >/dev/null || { s=$$([ "$$(id -u)" -ne 0 ] && echo sudo); \
		$$s apt-get update -q && $$s apt-get install -y -q --no-install-recommends stress-ng; }
	stress-ng --cpu $$(nproc) --quiet & hog=$$!; trap "kill $$hog" EXIT; \
	for run in 1 2 3; do echo "== loaded run $$run"; $(MAKE) test ROS_DISTRO=$(ROS_DISTRO) || exit 1; done

demo: setup
	$(ROS_ENV) && taco-ros demo --output-dir demo_output $(DEMO_ARGS)

bench: setup
	$(ROS_ENV) && for b in bench/bench_*.py; do echo "== $$b"; .venv/bin/python $$b || exit 1; done

clean:
	rm -rf build install log .stamps .jazzy
