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

.PHONY: venv reproduce report readme-figure test lint format clean

venv: $(STAMP)

# The pinned set, then the project itself (editable: the rules and tests run the code of this checkout).
$(STAMP): envs/requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { echo "make: Python >= 3.11 \
	is needed; '$(PYTHON)' is $$($(PYTHON) -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo 'no \
	working Python'). Choose another with PYTHON=, e.g. make $(or $(MAKECMDGOALS),venv) PYTHON=python3.12" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r envs/requirements.txt -e .
	touch $@

# The workflow's last rule audits its own results (results/audit.txt, in the report); a disagreement fails here.
reproduce: venv
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report results/report.html
	@cat results/audit.txt
	@head -n 1 results/audit.txt | grep -q '^audit: clean' || { echo "the audit found disagreements (above)" >&2; exit 1; }

report: venv
	$(BIN)/snakemake --report results/report.html

# The README's headline figure, drawn by the workflow's own code from a committed reference run: its
# summary_stats.csv and rank_times.csv (whose SHA-256s the PNG embeds) and caption.txt (its machine and commit).
REFERENCE ?= benchmarks/results/default-run-vm-2core-2026-12-07
readme-figure: venv
	$(BIN)/python -m mpi_ensemble figures --stats $(REFERENCE)/summary_stats.csv \
	  --rank-times $(REFERENCE)/rank_times.csv --paper paper/reported_results.csv \
	  --outputs fig_headline=docs/images/headline.png --caption "$$(cat $(REFERENCE)/caption.txt)"

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .

format: venv
	$(BIN)/snakefmt .

clean:
	rm -rf results logs .snakemake
