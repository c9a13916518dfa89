"""Python imports `sitecustomize` from the path as it starts. The tests put this folder on PYTHONPATH of the jobs
they run, so a job in which a test names a rank (the variables in faults.py) gets the fault hooks wrapped around
its training code before it starts; without those variables nothing is touched. The product has no hooks of its
own."""

import faults

faults.install_if_asked()
