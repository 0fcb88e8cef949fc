# The README's two commands: `make demo` (set up, run the main job) and `make test` (set up, run all tests).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STORES := stores

.PHONY: setup build test demo clean

setup: $(STAMP)

# (this machine's pip config names local indexes that are absent for most packages: hide that noise)
PIP_QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

$(STAMP): requirements.txt setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	set -o pipefail; $(PY) -m pip install -q --disable-pip-version-check -r requirements.txt $(PIP_QUIET)
	set -o pipefail; $(PY) -m pip install -q --disable-pip-version-check --no-deps -e . $(PIP_QUIET)
	touch $@

build: setup
	bash scripts/build_ros.sh

test: build
	source scripts/ros_env.sh && pytest test

$(STORES)/resnet50/manifest.json: $(STAMP)
	$(VENV)/bin/swapnet convert torchvision:resnet50 --out $(STORES)/resnet50 --force

demo: $(STORES)/resnet50/manifest.json
	$(VENV)/bin/swapnet plan $(STORES)/resnet50 --budget 1/4
	$(VENV)/bin/swapnet run $(STORES)/resnet50 --budget 1/4 --compare-resident --repeat 7
	$(VENV)/bin/swapnet run $(STORES)/resnet50 --budget 1/4 --compare-resident --repeat 7 --io mmap

clean:
	rm -rf build install log $(STORES)
