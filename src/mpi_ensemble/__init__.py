"""Reproduction of Rehman et al.: MPI-sharded CNN training on MNIST combined by majority vote.

One module per stage of the workflow (data, training, combine, summarize, with plots for the figures, and the
audit), the declaration of every method they read (methods), the building blocks they share (model, runtime,
startup, records, provenance, checkpoint, collective, data_parallel, local_sgd, network, voting, metrics, atomic),
and one command line whose sub-commands carry the rule names: `python -m mpi_ensemble RULE ...` (cli.py).
"""

__version__ = "0.3.0"
