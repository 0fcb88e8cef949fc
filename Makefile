# The README's two commands: `make demo` (set up, run the main job) and `make test` (set up, run all tests).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STORES := stores

.PHONY: setup build test test-jazzy demo demo-core bench bench-quick clean

setup: $(STAMP)

# (this machine's pip config names local indexes that are absent for most packages: hide that noise)
PIP_QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

$(STAMP): requirements.txt requirements-common.txt setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	set -o pipefail; $(PY) -m pip install -q --disable-pip-version-check -r requirements.txt $(PIP_QUIET)
	set -o pipefail; $(PY) -m pip install -q --disable-pip-version-check --no-deps -e . $(PIP_QUIET)
	touch $@

# The same package against ROS 2 Jazzy's wheels: a second environment and build (.venv-jazzy,
# build-jazzy/ install-jazzy/ log-jazzy/), and every test that touches rclpy run against it.
JAZZY_VENV := .venv-jazzy
JAZZY_STAMP := $(JAZZY_VENV)/.installed
ROS_TESTS := test/test_package.py test/test_coordinator.py test/test_ros_image.py test/test_ros_integration.py \
	test/test_ros_faults.py test/test_ros_fuzz.py test/test_replay_sources.py test/test_launch.py \
	test/test_ros_adapters.py

$(JAZZY_STAMP): requirements-jazzy.txt requirements-common.txt setup.py
	test -x $(JAZZY_VENV)/bin/python || python3 -m venv $(JAZZY_VENV)
	set -o pipefail; $(JAZZY_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements-jazzy.txt $(PIP_QUIET)
	set -o pipefail; $(JAZZY_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps -e . $(PIP_QUIET)
	touch $@

test-jazzy: $(JAZZY_STAMP)
	SWAPNET_DISTRO=jazzy bash scripts/build_ros.sh
	export SWAPNET_DISTRO=jazzy && source scripts/ros_env.sh && python -P -m pytest -q -p no:cacheprovider $(ROS_TESTS)

build: setup
	bash scripts/build_ros.sh

# colcon runs the pytest suite (unit, zoo and ROS integration tests) through ament_cmake_pytest
# then the ROS-facing tests again against Jazzy's rclpy (test-jazzy, below)
test: build
	source scripts/ros_env.sh && colcon test --base-paths . --build-base build --install-base install \
		--packages-select swapnet_ros --return-code-on-test-failure --event-handlers console_direct+
	$(MAKE) --no-print-directory test-jazzy

$(STORES)/resnet50/manifest.json: $(STAMP)
	$(VENV)/bin/swapnet convert torchvision:resnet50 --out $(STORES)/resnet50 --force

# The main job: camera_replay -> perception (three networks sharing one budget) -> viewer, on the
# bundled photos; prints a per-model table and leaves annotated frames in out/demo/frames.
# (python -P: the source tree's swapnet_ros, which lacks the generated messages, must not shadow install/)
demo: build
	source scripts/ros_env.sh && python -P -m swapnet_ros.demo --params config/perception.yaml --out out/demo

# The core alone: one network swapped at 1/4 of its weights vs. resident.
demo-core: $(STORES)/resnet50/manifest.json
	$(VENV)/bin/swapnet plan $(STORES)/resnet50 --budget 1/4
	$(VENV)/bin/swapnet run $(STORES)/resnet50 --budget 1/4 --compare-resident --repeat 7
	$(VENV)/bin/swapnet run $(STORES)/resnet50 --budget 1/4 --compare-resident --repeat 7 --io mmap

# Every suite (about an hour on two cores), then BENCHMARKS.md and its plots from bench/results/
bench: setup
	$(PY) bench/io_bound.py
	$(PY) bench/read_path.py
	$(PY) bench/slicing.py
	$(PY) bench/peers.py
	$(PY) bench/swap_vs_resident.py
	$(PY) bench/multi_dnn.py
	$(PY) bench/report.py

# Ours vs. resident, naive swapping and accelerate on one small model at two budgets, compute-bound
# (peers) and I/O-bound (small inputs, against the physical bound): about four minutes; writes the
# *_quick.json results and latest.json, never the full results
bench-quick: setup
	$(PY) bench/peers.py --quick
	$(PY) bench/io_bound.py --quick

clean:
	rm -rf build install log build-jazzy install-jazzy log-jazzy $(STORES) out
