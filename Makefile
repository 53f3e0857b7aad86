# Two commands: `make demo` trains the embedded digits task, `make test` runs
# the whole suite. Both create the virtual environment first if it is missing.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
LOGDIR ?= /tmp/gpipe_lingvo_demo

.PHONY: demo test test-fast venv bench clean

$(VENV)/.done: requirements.txt requirements-nodeps.txt
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q -r requirements.txt
	$(VPY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

venv: $(VENV)/.done

demo: $(VENV)/.done
	$(VPY) trainer.py --model=digits.ConvNet --logdir=$(LOGDIR) --mode=train_and_eval

test: $(VENV)/.done
	$(VPY) -m pytest -q tests

test-fast: $(VENV)/.done
	$(VPY) -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV)
