# `make test` (build .venv if missing, run the whole suite), `make check` (the fast tier),
# `make lint`, `make slurm` (install the local SLURM cluster's programs) and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: venv test check lint slurm demo clean

# The venv is rebuilt whenever requirements.txt changes.
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

# The whole suite: science, notebooks and the SLURM tests (which skip without `make slurm`, or
# fail under CI=true).
test: venv
	$(PY) -m pytest -q

# The fast tier, under a minute on 2 cores: everything not marked slow or slurm.
check: venv
	$(PY) -m pytest -q -m "not slow and not slurm"

lint: venv
	$(VENV)/bin/ruff check .

# Installs Debian's slurm-wlm and munge (root, apt-get) unless they are there; idempotent.
slurm:
	$(PYTHON) tests/slurm_cluster.py install

demo: venv
	$(PY) expt_dln.py with demo

clean:
	rm -rf $(VENV) outputs
