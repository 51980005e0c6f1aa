# Two commands for users: `make demo` and `make test`. Both create .venv/ on first use.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.bootstrap-stamp
export PYTHONUNBUFFERED := 1
export ROS_DOMAIN_ID ?= 42
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp

.PHONY: setup demo test bench lint colcon clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml ros2_ws/src/posevla_ros/setup.py ros2_ws/src/posevla_ros/posevla_ros/graph.py scripts/bootstrap.sh
	bash scripts/bootstrap.sh
	touch $(STAMP)

demo: setup
	$(VENV)/bin/posevla demo

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(VENV)/bin/posevla bench

lint: setup
	$(VENV)/bin/ruff check posevla ros2_ws/src tests benchmarks
	$(VENV)/bin/mypy

colcon: setup
	source $(VENV)/bin/activate && cd ros2_ws && colcon build --base-paths src ../ --build-base /tmp/posevla_colcon_build --install-base install

clean:
	rm -rf $(VENV) ros2_ws/build ros2_ws/install ros2_ws/log
