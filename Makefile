# Two commands: `make demo` trains the embedded digits task, `make test` runs
# the whole suite. Both create the virtual environment first if it is missing.
# `make bazel-test` runs the same tests with Bazel (docs/bazel.md), installing
# Bazel from a package registry first if needed.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
LOGDIR ?= /tmp/gpipe_lingvo_demo

.PHONY: demo test test-fast venv bench clean bazel-install bazel-test bazel-test-fast

$(VENV)/.done: requirements.txt requirements-nodeps.txt
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q -r requirements.txt
	$(VPY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

venv: $(VENV)/.done

demo: $(VENV)/.done
	$(VPY) trainer.py --model=digits.ConvNet --logdir=$(LOGDIR) --mode=train_and_eval

# Two pytest workers: most of a test's time is single-threaded tracing, so
# two processes keep both cores busy (pytest-xdist).
test: $(VENV)/.done
	$(VPY) -m pytest -q -n 2 --durations=20 tests

test-fast: $(VENV)/.done
	$(VPY) -m pytest -q -n 2 -m "not slow" tests

bazel-install:
	@tools/install_bazel.sh

bazel-test: $(VENV)/.done bazel-install
	tools/bazelw test //...

bazel-test-fast: $(VENV)/.done bazel-install
	tools/bazelw test --config=fast //...

clean:
	rm -rf $(VENV)
