# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ROS_WHEELS ?= ../shared/ros/wheels
# The stamp names the inputs of the install, so editing them re-runs it while a second run reuses the venv.
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-ros.txt setup.py setup.cfg pyproject.toml tools/ament_venv.py 2>/dev/null | sha1sum | cut -c1-12)$(if $(wildcard $(ROS_WHEELS)),-rosw)

.PHONY: venv test demo bench loop clean
venv: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -r requirements.txt -r requirements-ros.txt
	@if [ -d "$(ROS_WHEELS)" ]; then \
	  echo "installing the ROS 2 tooling wheels from $(ROS_WHEELS)"; \
	  $(PY) -m pip install -q --no-deps $(ROS_WHEELS)/*.whl; \
	else echo "note: $(ROS_WHEELS) absent; launch/ros2cli/message_filters tests will be skipped"; fi
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@# The venv becomes an ament prefix: `source .venv/bin/activate`, then `ros2 launch/run stereo_depth_ros ...`.
	$(PY) tools/ament_venv.py $(VENV)
	@rm -f $(VENV)/.installed-*; touch $@

# Lint (ruff) and type check (mypy) of the three packages first (settings in pyproject.toml), then the tests.
LINTED := stereo_depth_ros training stereo_devkit launch
test: venv
	$(PY) -m ruff check $(LINTED)
	$(PY) -m mypy
	$(PY) -m pytest -q tests

demo: venv
	$(PY) -m stereo_devkit.demo

# Benchmarks print figures; on a machine with a GPU they measure it, here the CPU.
bench: venv
	$(PY) bench/models.py
	$(PY) bench/node.py
	$(PY) bench/node_e2e.py transport
	$(PY) bench/capture.py
	$(PY) bench/budget.py
	$(PY) bench/train.py
	$(PY) bench/export.py
	$(PY) bench/label.py

# The whole distillation loop at toy scale on CPU: rosbag -> extract -> label -> train -> eval -> export -> node.
loop: venv
	$(PY) -m stereo_distill.loop --config config/distill.yaml

clean:
	rm -rf $(VENV) build install log *.egg-info
