"""Reproduction of Rehman et al.: MPI-sharded CNN training on MNIST combined by majority vote.

One module per stage of the workflow (data, training, combine, summarize, with plots for the figures), the
building blocks they share (model, runtime, records, allreduce, voting, metrics, atomic, faults), and one command
line whose sub-commands carry the rule names: `python -m mpi_ensemble RULE ...` (cli.py).
"""

__version__ = "0.3.0"
