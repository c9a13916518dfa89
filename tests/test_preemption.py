"""Preemption on the real test cluster (tests/slurm_cluster.py, fixtures of tests/test_cluster.py): a training job
submitted through the SLURM profile is requeued by SLURM while it trains (`scontrol requeue`, what preemption with
PreemptMode=REQUEUE does), is stopped, starts again in the same job, resumes from its checkpoint and ends with the
weights of a job that was never cut.

Skipped without root or SLURM (a failure with REQUIRE_SLURM=1, as in CI), like the other cluster tests.
"""

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import faults
import pytest
from conftest import BIN, ENSEMBLE_RECORDS, RESUME, ROOT, assert_audit_clean, hooked, project_copy, resume_point
from test_cluster import PROFILE, cluster, cluster_available  # noqa: F401  (the cluster fixtures, as they are)
from test_faults import wait_for


pytestmark = pytest.mark.workflow

CONFIG, RECORDS = RESUME, ENSEMBLE_RECORDS
CHECKPOINTS = Path("results/checkpoints/models/ranks2/seed0")


def alive(pid):
    try:
        with open(f"/proc/{pid}/status") as handle:
            return "zombie" not in handle.read().lower()
    except OSError:
        return False


def job_field(cluster, job_id, field):
    """One `Key=Value` of `scontrol show job`."""
    text = cluster.run_client("scontrol", "show", "job", job_id).stdout
    return next((item.split("=", 1)[1] for item in text.split() if item.startswith(f"{field}=")), None)


def test_slurm_profile_requeues_preempted_and_resubmits_failed_jobs():
    import yaml

    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile["slurm-requeue"] is True and profile["retries"] >= 1


def test_requeued_training_job_resumes_to_the_weights_of_an_uncut_one_and_audits_clean(cluster, uncut_ensemble,
                                                                                        tmp_path):
    """The whole workflow through the SLURM profile; its 2-rank training job is requeued in epoch 3, resumes, and
    the run goes on to its audit, which is clean: the resumed row's times are empty, its accuracy counts."""
    _, uncut = uncut_ensemble  # the same job, never cut (locally, 1 thread per rank)

    work = project_copy(tmp_path / "work")
    hold = tmp_path / "hold"
    env = hooked({**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "SLURM_CONF": str(cluster.conf),
                  faults.HOLD_ENV: "1", faults.HOLD_FILE_ENV: str(hold), faults.HOLD_EPOCH_ENV: "3"})
    run = subprocess.Popen([str(BIN / "snakemake"), "--cores", "2", *PROFILE, "--config", *CONFIG], cwd=work, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        # Rank 1 announces that it is inside epoch 3 of 5 (epochs 1-2 checkpointed) and waits there.
        announce = Path(f"{hold}.rank1")
        wait_for(announce.exists, 600, "rank 1 of the SLURM job to reach epoch 3")
        pid, job_id = announce.read_text().split()
        assert (work / CHECKPOINTS / "rank1" / "epoch2" / "state.npz").is_file()
        assert job_field(cluster, job_id, "JobState") == "RUNNING" and job_field(cluster, job_id, "Requeue") == "1"

        requeued = cluster.run_client("scontrol", "requeue", job_id)
        assert requeued.returncode == 0, requeued.stderr
        stopped = time.monotonic()
        wait_for(lambda: not alive(int(pid)), 60, "the preempted rank to stop")
        print(f"\nSLURM job {job_id} requeued; its rank stopped after {time.monotonic() - stopped:.1f} s")
        # SLURM holds a requeued job back until its credentials have expired (BeginTime; cred_expire, 30 s on the
        # test cluster, 120 s by default): started sooner, slurmd refuses it ("Job credential revoked") and it
        # fails, so the test waits as a user's job would.
        wait_for(lambda: job_field(cluster, job_id, "JobState") == "PENDING", 120, "the job to be pending again")
        # Rank 0 trained on independently: it resumes from wherever it had got.
        rank0_saved = resume_point(work / CHECKPOINTS / "rank0")
        output, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 0, output[-5000:]
    records = [json.loads((work / p).read_text()) for p in RECORDS]
    hashes = [r["weights_sha256"] for r in records]
    print(f"preempted in epoch 3/5, resumed from epochs {[r['resumed_from_epoch'] for r in records]}: "
          f"weights {hashes}, uncut {uncut}")
    assert job_field(cluster, job_id, "Restarts") == "1" and job_field(cluster, job_id, "JobState") == "COMPLETED"
    assert {r["scheduler"]["SLURM_JOB_ID"] for r in records} == {job_id}  # the same job, started again
    assert [r["resumed_from_epoch"] for r in records] == [rank0_saved, 2]
    assert hashes == uncut
    log = (work / "logs" / "train_mpi" / "ranks2" / "seed0.log").read_text()
    assert "resuming after epoch 2" in log and "ensemble_member rank 1/2 epoch 5/5: loss " in log
    assert not (work / "results" / "checkpoints").exists()
    assert_audit_clean(work)
    rows = {(r["method"], r["ranks"]): r for r in csv.DictReader(open(work / "results" / "summary.csv"))}
    resumed = rows[("ensemble_majority", "2")]
    assert int(resumed["resumed_from_epoch"]) >= 2 and resumed["fit_seconds_max"] == resumed["job_seconds"] == ""
