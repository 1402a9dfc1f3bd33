# tdmpc_ros: the two commands a new user needs are `make demo` and `make test`.
# Every target sets the project up first (tools/setup.sh, quick once done).
SHELL := /bin/bash
ENV := tools/env.sh

.PHONY: help setup test lint demo bench clean
.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

setup:  ## Debian packages, the venv with pinned packages, and the colcon build (idempotent)
	bash tools/setup.sh

test: setup  ## set up, then run every test and the linter
	bash tools/setup_ros2_cli.sh
	$(ENV) pytest
	$(ENV) ruff check .

lint: setup  ## ruff only
	$(ENV) ruff check .

demo: setup  ## the main job, in simulation (see README)
	$(ENV) python -m tdmpc_ros.demo

bench: setup  ## benchmark figures, one JSON object a line
	$(ENV) python tools/bench.py

clean:  ## remove build outputs (the venv stays; delete ~/.cache/tdmpc_ros to remove it)
	rm -rf build install log
