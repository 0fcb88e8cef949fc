# The README's two commands: `make demo` (set up, run the main job) and `make test` (set up, run all tests).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STORES := stores

.PHONY: setup build test demo clean

setup: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

build: setup
	bash scripts/build_ros.sh

test: build
	source scripts/ros_env.sh && pytest test

$(STORES)/resnet50/manifest.json: $(STAMP)
	$(VENV)/bin/swapnet convert torchvision:resnet50 --out $(STORES)/resnet50 --force

demo: $(STORES)/resnet50/manifest.json
	$(VENV)/bin/swapnet run $(STORES)/resnet50 --budget 1/4 --compare-resident --repeat 7
	$(VENV)/bin/swapnet run $(STORES)/resnet50 --budget 1/4 --compare-resident --repeat 7 --io mmap

clean:
	rm -rf build install log $(STORES)
