# Two entry points: `make reproduce` (the paper, default config) and `make test` (the suite). Both build .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
# Harmless for MPICH; lets a site's Open MPI run as root (containers, CI).
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export TF_CPP_MIN_LOG_LEVEL ?= 1

.PHONY: venv reproduce report test lint format clean

venv: $(STAMP)

$(STAMP): envs/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r envs/requirements.txt
	touch $@

# The workflow's last rule audits its own results (results/audit.txt, in the report); a disagreement fails here.
reproduce: venv
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report results/report.html
	@cat results/audit.txt
	@head -n 1 results/audit.txt | grep -q '^audit: clean' || { echo "the audit found disagreements (above)" >&2; exit 1; }

report: venv
	$(BIN)/snakemake --report results/report.html

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .

format: venv
	$(BIN)/snakefmt .

clean:
	rm -rf results logs .snakemake
