#!/usr/bin/env bash
# Installs the workflow's own package, mpi-ensemble 0.3.0, into this conda env (its dependencies are the env's):
# from where Snakemake read the workflow, which common.smk puts in MPI_ENSEMBLE_SOURCE (pip arguments).
set -euo pipefail
python -m pip install --no-deps ${MPI_ENSEMBLE_SOURCE:?set by the workflow (common.smk) under --sdm conda}
