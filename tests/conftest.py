import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUNDLED = ROOT / "data" / "mnist"
# The fault hooks (hooks/faults.py), which hooks/sitecustomize.py wraps around the training code of any job started
# with this folder on PYTHONPATH and a fault variable set; the tests import them as `faults`.
HOOKS = Path(__file__).resolve().parent / "hooks"
sys.path.insert(0, str(HOOKS))

# The suite runs on two pytest-xdist workers (pyproject.toml). A worker takes whole files, so that a file's module
# fixtures are made once; the files that start SLURM clusters share one worker, one after the other, as every
# cluster writes SLURM's default configuration path (tests/slurm_cluster.py). The longest go first, so that the
# workers end together.
SHARED_WORKER = {"test_cluster.py": "slurm", "test_network.py": "slurm", "test_nodes.py": "slurm"}
LONGEST_FIRST = ("slurm", "test_faults.py", "test_workflow.py", "test_deploy.py", "test_training.py")


def worker_scope(nodeid):
    """The unit one worker takes whole: a test's file, or its files' shared name."""
    name = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return SHARED_WORKER.get(name, name)


def pytest_collection_modifyitems(items):
    order = {scope: i for i, scope in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(worker_scope(item.nodeid), len(order)))  # stable within a file


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's file scheduling, with the scopes above (its xdist_group marks do not reach it under pytest 9)."""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return worker_scope(nodeid)

    return Scheduling(config, log)


def hooked(env):
    """`env` with the fault hooks' folder first on PYTHONPATH (inert unless a fault variable is set)."""
    path = os.pathsep.join(p for p in (str(HOOKS), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path}


def idx_bytes(array):
    """Encode a uint8 array as IDX (the inverse of data.parse_idx)."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_gz(path, raw, mtime=0):
    with open(path, "wb") as handle, gzip.GzipFile(fileobj=handle, mode="wb", mtime=mtime) as gz:
        gz.write(raw)
    return path


def project_copy(dest):
    """A fresh checkout of the project's tracked files (what a user clones), with the working tree's edits."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def snakemake(workdir, *args, check=True, timeout=900, env=None):
    cmd = [str(BIN / "snakemake"), "--cores", "2", *args]
    full_env = hooked({**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
                             f"{failed_job_logs(workdir, result.stdout + result.stderr)}")
    return result


def failed_job_logs(workdir, output):
    """The end of each log a failed job names: Snakemake's own output says only where the error is."""
    named = re.findall(r"log: (.+?) \(check log file", output)
    logs = dict.fromkeys(Path(workdir) / log for line in named for log in line.split(", "))
    return "".join(f"\n--- {log} ---\n{log.read_text(errors='replace')[-3000:]}" for log in logs if log.is_file())


def resume_point(folder):
    """The epoch a rank's checkpoint store would resume from (0: none), as the store itself decides: a rank stopped
    between writing a new epoch and removing the old one leaves both, and a half-written one is no checkpoint."""
    from mpi_ensemble import checkpoint

    return max(checkpoint.Store(folder).saved_epochs(), default=0)


# A 2-rank ensemble job of 5 short epochs: what the resume tests cut, locally and under SLURM, each journey then
# running the rest of the workflow (the paper's rows alone) through to its audit.
RESUME = ["max_train_images=600", "max_test_images=100", "epochs=5", "batch_size=32", "ranks=[2]", "seeds=[0]",
          "baseline_threads=[1]", "control_ranks=none"]
ENSEMBLE_RECORDS = [f"results/models/ranks2/seed0/rank{r}.json" for r in range(2)]


@pytest.fixture(scope="session")
def uncut_ensemble(tmp_path_factory):
    """That job run once, uncut: its folder (the local resume test goes on in it) and its ranks' weight hashes,
    which every resumed run must end with."""
    work = project_copy(tmp_path_factory.mktemp("uncut"))
    snakemake(work, "--config", *RESUME, "--", *ENSEMBLE_RECORDS)
    return work, [json.loads((work / p).read_text())["weights_sha256"] for p in ENSEMBLE_RECORDS]


SMOKE = ["max_train_images=6000", "max_test_images=1000", "epochs=1", "ranks=[1,2]", "seeds=[0]",
         "local_sgd_periods=[16,epoch]"]


def audit_verdict(work):
    """The first line of the run's own audit, results/audit.txt, and the rest (its disagreements)."""
    lines = (Path(work) / "results" / "audit.txt").read_text().splitlines()
    return lines[0], lines[1:]


def assert_audit_clean(work):
    first, rest = audit_verdict(work)
    assert first.startswith("audit: clean (") and not rest, "\n".join([first, *rest])


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The whole workflow on a small subset (6,000/1,000 images, 1 epoch, ranks 1 and 2), run once per session."""
    work = project_copy(tmp_path_factory.mktemp("smoke"))
    snakemake(work, "--config", *SMOKE)
    return work


def skip_unless_required(reason):
    """Skip, printing why; under REQUIRE_SYSTEM_TESTS=1 (CI, which installs the packages) fail instead."""
    if os.environ.get("REQUIRE_SYSTEM_TESTS") == "1":
        pytest.fail(f"REQUIRE_SYSTEM_TESTS=1, but this test cannot run: {reason}")
    pytest.skip(reason)


def skip_unless_slurm(reason):
    """Skip the SLURM tests, printing why; under REQUIRE_SLURM=1 (CI, which installs the packages) fail instead."""
    if os.environ.get("REQUIRE_SLURM") == "1":
        pytest.fail(f"REQUIRE_SLURM=1, but the SLURM tests cannot run: {reason}")
    pytest.skip(reason)
