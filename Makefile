# taco_ros: every job starts with the idempotent set-up (Debian packages, .venv, colcon build).
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROS_ENV := source install/setup.bash
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: help setup test lint demo bench clean

help:
	@echo "make demo   set up, then run the demo (bag -> taco_node -> overlay video, contact sheet, table)"
	@echo "make test   set up, then lint and run the whole test suite"
	@echo "make setup  only the set-up (scripts/setup.sh)"
	@echo "make bench  run the benchmarks in bench/ (prints tables and ratios)"
	@echo "make lint   ruff"

setup:
	bash scripts/setup.sh

lint: setup
	.venv/bin/ruff check .

test: lint
	$(ROS_ENV) && .venv/bin/python -m pytest -ra --timeout=1200 $(PYTEST_ARGS)

demo: setup
	$(ROS_ENV) && taco-ros demo --output-dir demo_output $(DEMO_ARGS)

bench: setup
	$(ROS_ENV) && for b in bench/bench_*.py; do echo "== $$b"; .venv/bin/python $$b || exit 1; done

clean:
	rm -rf build install log .stamps
