#!/usr/bin/env bash
# Installs the workflow's own package, mpi-ensemble 0.3.0, into this conda env (its dependencies are the env's),
# from where Snakemake read the workflow (common.smk puts it in MPI_ENSEMBLE_SOURCE): a git URL, or a local copy,
# which pip builds from a temporary copy so that nothing is written into the workflow's folder.
set -euo pipefail
source=${MPI_ENSEMBLE_SOURCE:?set by the workflow (common.smk) under --sdm conda}
if [ -d "$source" ]; then
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  cp -r "$source/pyproject.toml" "$source/README.md" "$source/src" "$build/"
  source=$build
fi
python -m pip install --no-deps "$source"
