# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   install into .venv, then run the four notebooks on the synthetic dataset (CPU)
#   make test   install into .venv, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: install demo test test-slow clean

$(BIN)/.msadkit-installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

install: $(BIN)/.msadkit-installed

demo: install
	$(BIN)/msadkit demo --out $(DEMO_OUT)

test: install
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) runs .pytest_cache
