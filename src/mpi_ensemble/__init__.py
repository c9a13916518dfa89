"""Reproduction of Rehman et al.: MPI-sharded CNN training on MNIST combined by majority vote.

The package holds the pure logic; `workflow/rules/*.smk` call it through `python -m mpi_ensemble.cli`.
"""

__version__ = "0.1.0"
