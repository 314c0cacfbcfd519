# The README's two commands: `make demo` and `make test`. Both create .venv when it is
# missing and reinstall only when pyproject.toml changed (the install is editable).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q
INSTALLED := $(VENV)/.installed
INSTALLED_TEST := $(VENV)/.installed-test

.PHONY: demo test bench bench-save clean

demo: $(INSTALLED)
	$(VENV)/bin/invbench demo

test: $(INSTALLED_TEST)
	$(PY) -m pytest

# Speed regression tracking (pytest-benchmark), kept out of `make test`: `make bench`
# compares with the latest baseline saved on this machine under results/baselines/speed
# (fails when a median is 25 % slower); `make bench-save` stores a new one.
BENCH_STORAGE := --benchmark-storage=file://results/baselines/speed
bench: $(INSTALLED_TEST)
	$(PY) -m pytest tests/speed -o addopts="" --benchmark-only $(BENCH_STORAGE) --benchmark-compare --benchmark-compare-fail=median:25%

bench-save: $(INSTALLED_TEST)
	$(PY) -m pytest tests/speed -o addopts="" --benchmark-only $(BENCH_STORAGE) --benchmark-save=baseline

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(PY)
	$(PIP) -e . 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import invbench, invbench.methods, invbench.datasets, torch, torchvision, pandas, seaborn, submitit"
	touch $@

$(INSTALLED_TEST): pyproject.toml $(INSTALLED)
	$(PIP) -e '.[test]' 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import pytest, pytest_benchmark"
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache
