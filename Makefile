# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   install into .venv, then run the four notebooks on the synthetic dataset (CPU)
#   make test   install into .venv, then run the test suite
#   make lab    install into .venv, then open the notebooks in JupyterLab
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: install demo lab test test-slow mutation clean

$(BIN)/.msadkit-installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

install: $(BIN)/.msadkit-installed

demo: install
	$(BIN)/msadkit demo --out $(DEMO_OUT)

# JupyterLab on the notebooks folder (kernels run there: relative paths resolve from notebooks/).
# Jupyter refuses to start as root without --allow-root (containers often run as root).
LAB_ROOT_FLAG := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root,)
lab: install
	$(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_ROOT_FLAG) $(LAB_ARGS)

test: install
	$(BIN)/lint-imports
	$(BIN)/ruff check msadkit
	$(BIN)/mypy msadkit
	$(BIN)/python -m pytest
	# The numerically delicate tests again with the AVX2 kernels every x86-64 CPU has (an AVX-512
	# machine's default kernels round differently).
	ATEN_CPU_CAPABILITY=avx2 $(BIN)/python -m pytest -q tests/modeling tests/distill

test-slow: install
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -m slow

# Mutation testing of the core modules (pyproject.toml [tool.mutmut]); hours on 2 cores, not in CI.
# Results and the triage of survivors: docs/testing.md.
mutation: install
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,mutation]"
	$(BIN)/mutmut run
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) runs .pytest_cache mutants
