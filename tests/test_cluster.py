"""The cluster: the workflow submitted through the SLURM profile to a real single-node SLURM cluster
(tests/slurm_cluster.py).

Without root or without the slurm-wlm/munge packages the cluster tests are skipped with the reason; with
REQUIRE_SLURM=1 (CI) that is a failure instead. The unit tests at the top run everywhere.
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import faults
import pytest
import slurm_cluster
import yaml
from conftest import (BIN, ROOT, assert_audit_clean, hooked, project_copy, resume_point, skip_unless_slurm,
                      snakemake)
from test_faults import wait_for

from mpi_ensemble import runtime

# Local SGD's jobs are submitted as the shared-start job is: that one stands for both.
SMALL = ["max_train_images=4000", "max_test_images=500", "epochs=1", "ranks=[1,2]", "seeds=[0]", "local_sgd_periods=[]",
         "baseline_threads=[1]"]
# The test cluster has no accounts and no accounting (so no sacct); poll early, its jobs are short.
PROFILE = [
    "--workflow-profile", "profiles/slurm", "--slurm-no-account", "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "5",
]


# --- pure functions behind the SLURM support ---------------------------------------------------------------


@pytest.mark.parametrize(
    "requested, environ, expected",
    [(2, {}, 2), (8, {"SLURM_CPUS_ON_NODE": "2"}, 2), (1, {"SLURM_CPUS_ON_NODE": "4"}, 1),
     (None, {"SLURM_CPUS_ON_NODE": "3"}, 3)],
)
def test_job_cores_never_exceed_the_allocation(requested, environ, expected):
    assert runtime.job_cores(requested, environ) == expected


def test_job_cores_without_limits_are_this_process_cores():
    assert runtime.job_cores(None, {}) == runtime.available_cores()
    assert runtime.slurm_cpus_on_node({"SLURM_CPUS_ON_NODE": "abc"}) is None


def test_scheduler_launch_commands():
    assert runtime.scheduler_launch_command(["srun", "--mpi=pmi2"], 4, 2) == [
        "srun", "--mpi=pmi2", "-n", "4", "--cpus-per-task=2", "--kill-on-bad-exit=1"]
    assert runtime.scheduler_launch_command(["srun", "-K0"], 2, 1) == ["srun", "-K0", "-n", "2", "--cpus-per-task=1"]
    assert runtime.scheduler_launch_command(["aprun"], 3, 1) == ["aprun", "-n", "3"]
    assert runtime.scheduler_launch_command([], 1, 2) == []  # singleton
    with pytest.raises(ValueError, match="only run 1 rank"):
        runtime.scheduler_launch_command([], 2, 1)


def test_job_cores_of_a_job_on_several_nodes_are_all_its_cpus():
    """Inside a multi-node MPI job the batch step sees its own node's share; the job holds them all."""
    assert runtime.slurm_job_cpus({"SLURM_JOB_CPUS_PER_NODE": "2(x3),1", "SLURM_CPUS_ON_NODE": "2"}) == 7
    assert runtime.slurm_job_cpus({"SLURM_JOB_CPUS_PER_NODE": "1,1", "SLURM_CPUS_ON_NODE": "1"}) == 2
    assert runtime.slurm_job_cpus({"SLURM_JOB_CPUS_PER_NODE": "junk", "SLURM_CPUS_ON_NODE": "3"}) == 3
    assert runtime.job_cores(2, {"SLURM_JOB_CPUS_PER_NODE": "1(x3)", "SLURM_CPUS_ON_NODE": "1"}) == 2
    assert runtime.job_cores(None, {"SLURM_JOB_CPUS_PER_NODE": "1(x3)"}) == 3


@pytest.mark.parametrize(
    "launcher, ranks, expected",
    [("srun --mpi=pmi2", 1, ""), ("srun --mpi=pmi2", 3, "srun --mpi=pmi2"), ("mpiexec", 1, "mpiexec"),
     ("/opt/mpi/bin/mpirun", 1, "/opt/mpi/bin/mpirun"), ("aprun", 2, "aprun")],
)
def test_one_rank_under_a_scheduler_launcher_is_a_singleton(launcher, ranks, expected):
    assert runtime.rank_launcher(launcher, ranks) == expected


def test_placement_asks_for_enough_nodes_and_spreads_them_evenly():
    assert runtime.placement(3, 0) == {"tasks": 3}
    assert runtime.placement(3, 1) == {"tasks": 3, "nodes": 3}
    assert runtime.placement(5, 2) == {"tasks_per_node": 2, "nodes": 3}  # 2 + 2 + 1, never 3 + 1 + 1
    assert runtime.placement(4, 2) == {"tasks_per_node": 2, "nodes": 2}
    assert runtime.placement(2, 4) == {"tasks_per_node": 2, "nodes": 1} and runtime.placement(1, 2) == {"tasks": 1}
    with pytest.raises(ValueError, match="ranks_per_node"):
        runtime.placement(2, -1)


def test_the_executor_chooses_the_launcher_and_a_configured_one_wins_with_a_warning_under_slurm():
    assert runtime.choose_launcher(None, "slurm")[0] == "srun --mpi=pmi2"
    assert runtime.choose_launcher(None, "slurm-jobstep")[0] == "srun --mpi=pmi2"  # inside the job
    assert runtime.choose_launcher(None, "local")[0] == "mpiexec"
    assert runtime.choose_launcher(None, None)[0] == "mpiexec"
    assert runtime.choose_launcher("srun --mpi=pmix", "slurm") == ("srun --mpi=pmix", "config key mpi_launcher", None)
    launcher, _, warning = runtime.choose_launcher("mpiexec", "slurm-jobstep")
    assert launcher == "mpiexec" and "may all start on the first node" in warning
    assert runtime.choose_launcher("/opt/mpi/bin/mpirun", "local")[2] is None


def test_slurm_profile_lives_where_snakedeploy_copies_it_and_leaves_mpi_to_the_workflow():
    """profiles/slurm (snakedeploy copies the top-level profiles/ into a deployed project); it sets no launcher or
    placement of its own, which a user's --default-resources or --configfile would silently drop."""
    import yaml

    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["default-resources"]["runtime"] > 0
    assert not {"set-resources", "configfile", "config"} & set(profile)
    assert not {"mpi_launcher", "ranks_per_node", "mpi"} & set(profile["default-resources"])
    assert not (ROOT / "workflow" / "profiles").exists()


@pytest.mark.parametrize("per_node, expected", [
    (0, {2: "tasks=2", 3: "tasks=3"}),
    (1, {2: "tasks=2, nodes=2", 3: "tasks=3, nodes=3"}),
    (2, {2: "tasks_per_node=2, nodes=1", 3: "tasks_per_node=2, nodes=2"}),
])
def test_dry_run_requests_per_rank_cpus_not_threads_placed_as_asked(tmp_path, per_node, expected):
    """What the plugin sees (dry run, no cluster): N tasks with cores // N CPUs each, never N × threads, every
    world size and both MPI methods; `ranks_per_node` k spreads them, k > 1 as k tasks on each of ceil(N / k)
    nodes (sbatch --ntasks-per-node=k), so SLURM cannot put them unevenly."""
    work = project_copy(tmp_path)
    out = snakemake(work, *PROFILE, "-n", "--config", *SMALL[:-2], "ranks=[1,2,3]", "seeds=[0]",
                    "control_ranks=all", f"ranks_per_node={per_node}")
    text = out.stdout + out.stderr
    for rule, n in [("train_mpi_ranks2", 2), ("train_data_parallel_ranks2", 2), ("train_mpi_ranks3", 3),
                    ("train_data_parallel_ranks3", 3)]:
        block = text[text.index(f"rule {rule}:"):]
        resources = block[block.index("resources:"):].splitlines()[0]
        assert "cpus_per_task=1," in resources and resources.endswith(expected[n]), resources
    block = text[text.index("rule train_mpi_ranks1:"):]
    assert "tasks=1" in block[block.index("resources:"):].splitlines()[0]


# --- the real cluster --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_available():
    reason = slurm_cluster.unavailable_reason()
    if reason:
        skip_unless_slurm(reason)


def test_cluster_stops_every_process_it_started(cluster_available, tmp_path):
    cluster = slurm_cluster.Cluster(tmp_path)
    try:
        cluster.start()
        daemons = [proc.pid for proc in cluster.procs.values()]
        job = cluster.run_client("sbatch", "--parsable", "-n", "1", "--mem", "100", "-o", "/dev/null",
                                 "--wrap", "srun -n 1 sleep 300")
        assert job.returncode == 0, job.stderr
        cluster.wait_for(lambda: cluster.run_client("squeue", "-h", "-t", "R").stdout.strip(), "job running", 60)
        started = cluster.leftover_pids()
        assert len(started) >= 2  # the step daemons and sleep, detached from slurmd
    finally:
        cluster.stop()
    for pid in daemons + started:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower(), pid
    assert not slurm_cluster.SYSTEM_CONF.exists()


@pytest.fixture(scope="module")
def cluster(cluster_available, tmp_path_factory):
    """munged, slurmctld and slurmd on localhost with 2 CPUs (this machine's), stopped by PID afterwards."""
    with slurm_cluster.running(slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm"), cpus=2, memory_mb=8000)) as up:
        yield up


def test_a_rank_failing_at_start_up_ends_the_srun_step(cluster, tmp_path):
    """Rank 1 exits (code 3) before MPI_Init while rank 0 waits in MPI_Init for the world to form. The srun
    command the workflow builds ends the step at once: the job fails within seconds instead of rank 0 waiting
    until the job's time limit (5 minutes here)."""
    rank = tmp_path / "rank.sh"
    rank.write_text(f'#!/bin/sh\nif [ "$SLURM_PROCID" = 1 ]; then exit 3; fi\ntouch {tmp_path}/rank0-started\n'
                    f'exec {sys.executable} -c "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"\n')
    rank.chmod(0o755)
    command = " ".join([*runtime.launch_prefix("srun --mpi=pmi2", 2, 1, True), str(rank)])
    assert "--kill-on-bad-exit=1" in command
    job = cluster.run_client("sbatch", "--parsable", "-n", "2", "--mem-per-cpu", "200", "--time", "5",
                             "-o", str(tmp_path / "job.out"), "--wrap", command)
    assert job.returncode == 0, job.stderr
    job_id, start = job.stdout.strip(), time.monotonic()

    def state():
        return re.search(r"JobState=(\w+)", cluster.run_client("scontrol", "show", "job", job_id).stdout)[1]

    cluster.wait_for(lambda: state() not in ("PENDING", "RUNNING", "COMPLETING"), f"end of job {job_id}", 120)
    info = cluster.run_client("scontrol", "show", "job", job_id).stdout
    assert (tmp_path / "rank0-started").exists()
    assert state() == "FAILED" and "ExitCode=0:0" not in info, info
    assert time.monotonic() - start < 60, info


def test_a_jobs_process_left_to_init_ends_with_the_job(cluster, tmp_path):
    """A preempted job's snakemake was left to init when the batch script's shell died of SLURM's SIGTERM, and did
    not exit. Here a process ignores SIGTERM in the same place, and SLURM's SIGKILL still reaches it (cancelling
    ends a job as requeueing does): no process of a job outlives it."""
    pidfile = tmp_path / "left.pid"
    script = f"sh -c 'trap \"\" TERM; echo $$ > {pidfile}; exec sleep 300' & wait"
    job = cluster.run_client("sbatch", "--parsable", "-n", "1", "--mem", "100", "-o", "/dev/null", "--wrap", script)
    assert job.returncode == 0, job.stderr
    cluster.wait_for(lambda: pidfile.is_file() and pidfile.read_text().strip(), "the job's process", 60)
    pid = int(pidfile.read_text())
    assert alive(pid) and cluster.run_client("scancel", job.stdout.strip()).returncode == 0
    wait_for(lambda: not alive(pid), 60, f"process {pid} of the cancelled job to end")


# The user's own config and default resources, neither of which may take srun away from the MPI jobs: the paper's
# rows at N = 1 and 2 and the methods beyond it at N = 2, on the resume tests' subset (conftest.RESUME: 5 short
# epochs), so that its 2-rank ensemble job is the very job conftest.uncut_ensemble ran without a cut.
OWN_CONFIG = {"max_train_images": 600, "max_test_images": 100, "epochs": 5, "batch_size": 32, "ranks": [1, 2],
              "seeds": [0], "local_sgd_periods": [], "baseline_threads": [1]}
OWN_RESOURCES = ["--default-resources", "mem_mb_per_cpu=1500", "runtime=30"]
CHECKPOINTS = Path("results/checkpoints/models/ranks2/seed0")


def job_field(cluster, job_id, field):
    """One `Key=Value` of `scontrol show job`."""
    text = cluster.run_client("scontrol", "show", "job", job_id).stdout
    return next((item.split("=", 1)[1] for item in text.split() if item.startswith(f"{field}=")), None)


def alive(pid):
    try:
        with open(f"/proc/{pid}/status") as handle:
            return "zombie" not in handle.read().lower()
    except OSError:
        return False


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """The journey of a user on a cluster: the workflow as a module in a folder of their own, its rules renamed
    `mpi_*`, submitted through the SLURM profile with their own --configfile and --default-resources; while it
    trains, SLURM preempts its 2-rank ensemble job in epoch 3 (`scontrol requeue`, what PreemptMode=REQUEUE does),
    which starts again in the same job, resumes, and the run goes on to its audit. Rank 1 announces that it is
    inside epoch 3 (epochs 1-2 checkpointed) and waits there, so the requeue meets training, without sleeping."""
    from test_deploy import module_project

    clone = project_copy(tmp_path_factory.mktemp("slurm_clone"))
    work = module_project(tmp_path_factory.mktemp("slurm_work") / "project", clone / "workflow" / "Snakefile", {},
                          prefix="mpi_")
    (work / "mine.yaml").write_text(yaml.safe_dump(OWN_CONFIG))
    hold = work.parent / "hold"
    env = hooked({**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "SLURM_CONF": str(cluster.conf),
                  faults.HOLD_ENV: "1", faults.HOLD_FILE_ENV: str(hold), faults.HOLD_EPOCH_ENV: "3",
                  faults.HOLD_COMMAND_ENV: "train_mpi"})
    run = subprocess.Popen([str(BIN / "snakemake"), "--cores", "2", *PROFILE, "--configfile", "mine.yaml",
                            *OWN_RESOURCES], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)
    try:
        announce = Path(f"{hold}.rank1")
        wait_for(announce.exists, 900, "rank 1 of the ensemble's SLURM job to reach epoch 3")
        pid, job_id = announce.read_text().split()
        preempted = {"job_id": job_id, "checkpointed": (work / CHECKPOINTS / "rank1" / "epoch2" / "state.npz").is_file(),
                     "state": job_field(cluster, job_id, "JobState"), "requeue": job_field(cluster, job_id, "Requeue")}
        requeued = cluster.run_client("scontrol", "requeue", job_id)
        assert requeued.returncode == 0, requeued.stderr
        wait_for(lambda: not alive(int(pid)), 60, "the preempted rank to stop")
        # SLURM holds a requeued job back until its credentials have expired (BeginTime; cred_expire, 30 s on the
        # test cluster, 120 s by default): started sooner, slurmd refuses it ("Job credential revoked") and it
        # fails, so the test waits as a user's job would.
        wait_for(lambda: job_field(cluster, job_id, "JobState") == "PENDING", 120, "the job to be pending again")
        preempted["rank0_saved"] = resume_point(work / CHECKPOINTS / "rank0")  # rank 0 trained on independently
        output, _ = run.communicate(timeout=1500)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 0, output[-5000:]
    preempted.update(restarts=job_field(cluster, job_id, "Restarts"), end=job_field(cluster, job_id, "JobState"),
                     records=rank_records(work),  # before another test trains that job again
                     log=(work / "logs" / "train_mpi" / "ranks2" / "seed0.log").read_text())
    return work, output, preempted


def submitted_rules(log):
    """Rule name -> SLURM job ids, from the plugin's 'submitted with SLURM jobid N (log: .../rule_NAME/...)'."""
    rules = {}
    for job_id, rule in re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", log):
        rules.setdefault(rule, []).append(job_id)
    return rules


def rank_records(work, n=2):
    return [json.loads((work / f"results/models/ranks{n}/seed0/rank{r}.json").read_text()) for r in range(n)]


def test_the_cluster_run_audits_clean_and_its_outputs_are_the_workflows(slurm_run):
    work, _, _ = slurm_run
    assert_audit_clean(work)
    with open(work / "results" / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    paper_rows = [r for r in rows if r["method"] in ("sequential", "ensemble_majority")]
    assert {(r["method"], r["ranks"], r["threads"]) for r in paper_rows} == {
        ("sequential", "1", "1"), ("ensemble_majority", "1", "2"),
        ("ensemble_majority", "2", "1")}
    assert {(r["method"], r["ranks"]) for r in rows} >= {("data_parallel", "2"), ("weight_average_shared_start", "2")}
    for row in rows:
        # members averaged from independent starts fall towards chance (docs/methods.md)
        assert 0.5 < float(row["accuracy"]) <= 1.0 or row["method"].startswith("weight_average_by"), row
        assert row["oversubscribed"] == "False"
    for row in paper_rows:
        if row["resumed_from_epoch"] == "0":  # the preempted job's times cover its last epochs alone: empty
            assert 0 < float(row["fit_seconds_mean"]) <= float(row["fit_seconds_max"]) < float(row["job_seconds"])
    ensemble = next(r for r in rows if r["method"] == "ensemble_majority" and r["ranks"] == "2")
    assert int(ensemble["train_images_per_rank"]) == 240  # 0.8 of 600 / 2
    # srun starts the ranks under slurmstepd, outside the job's process tree that Snakemake's benchmark samples:
    # no job memory for the 2-rank job, rather than the srun client's; the 1-process jobs have theirs.
    assert ensemble["train_job_max_rss_mib"] == "" and float(ensemble["rank_peak_rss_mib"]) > 100
    assert float(next(r for r in paper_rows if r["method"] == "sequential")["train_job_max_rss_mib"]) > 100
    for r in range(2):
        assert (work / f"results/models/ranks2/seed0/rank{r}.keras").stat().st_size > 100_000


def test_compute_jobs_were_submitted_and_the_rest_ran_locally(slurm_run):
    """The prefixed rules keep what each rule says of itself: fetching, voting and summarizing run beside
    Snakemake (compute nodes often have no internet), training is submitted."""
    work, log, _ = slurm_run
    rules = submitted_rules(log)
    assert set(rules) == {"mpi_preprocess", "mpi_train_sequential", "mpi_train_mpi_ranks1", "mpi_train_mpi_ranks2",
                          "mpi_train_data_parallel_ranks2", "mpi_train_data_parallel_rank_batch_ranks2",
                          "mpi_train_weight_average_shared_start_ranks2"}, log[-3000:]
    assert len(rules["mpi_train_sequential"]) == 1 and len(rules["mpi_train_mpi_ranks2"]) == 1
    for rule in ("fetch_data", "ensemble", "vote_variants", "weight_average", "single_shard", "summarize", "figures",
                 "tables", "audit"):
        assert f"localrule mpi_{rule}:" in log
    record = json.loads((work / "results/sequential/threads1/seed0/result.json").read_text())
    assert record["scheduler"]["SLURM_JOB_ID"] in rules["mpi_train_sequential"]


def test_one_rank_runs_as_a_singleton_in_a_one_task_job(slurm_run, cluster):
    """The plugin refuses MPI jobs of one task; the profile's empty launcher runs rank 0 as an MPI singleton."""
    work, log, _ = slurm_run
    [job_id] = submitted_rules(log)["mpi_train_mpi_ranks1"]
    [record] = rank_records(work, 1)
    assert record["ranks"] == 1 and record["scheduler"]["SLURM_JOB_ID"] == job_id
    assert record["thread_settings"]["threads"] == 2 and record["oversubscribed"] is False
    job = cluster.run_client("scontrol", "show", "job", job_id).stdout
    assert "NumTasks=1" in job and "CPUs/Task=2" in job, job


def test_mpi_job_is_one_two_rank_srun_step_in_one_allocation(slurm_run, cluster):
    """The user's --default-resources replaced the profile's, and their --configfile names no launcher: the SLURM
    executor still starts the ranks with srun, one step of the job."""
    work, log, _ = slurm_run
    [job_id] = submitted_rules(log)["mpi_train_mpi_ranks2"]
    assert "MPI jobs: launcher `srun --mpi=pmi2` (the slurm executor)" in log
    assert "srun --mpi=pmi2 -n 2 --cpus-per-task=1 --kill-on-bad-exit=1 " in log and "mpiexec -n 2" not in log
    records = rank_records(work)
    for r, record in enumerate(records):
        assert record["ranks"] == 2 and record["rank"] == r
        assert record["scheduler"]["SLURM_JOB_ID"] == job_id
        assert record["scheduler"]["SLURM_NTASKS"] == "2" and record["scheduler"]["SLURM_PROCID"] == str(r)
        assert record["thread_settings"]["threads"] == 1 and record["job_cores"] == 2
        assert record["mpi_library"].startswith("MPICH")
    assert records[0]["scheduler"]["SLURM_STEP_ID"] == records[1]["scheduler"]["SLURM_STEP_ID"]  # one srun step
    # What SLURM allocated (completed jobs stay visible to scontrol for MinJobAge): 2 tasks × 1 CPU, not 2 × 2.
    job = cluster.run_client("scontrol", "show", "job", job_id).stdout
    assert "NumTasks=2" in job and "CPUs/Task=1" in job and re.search(r"NumCPUs=2\b", job), job


def test_mpiexec_inside_the_allocation_also_gives_one_world(slurm_run, cluster):
    """One rule's launcher set to the pip MPICH's mpiexec (a --set-resources entry beats the executor's choice):
    Hydra inside the allocation, still one 2-rank world in one job."""
    work, log, _ = slurm_run
    [first_job] = submitted_rules(log)["mpi_train_mpi_ranks2"]
    # Only the training job's own outputs: what depends on them is the first run's business.
    targets = [f"results/models/ranks2/seed0/rank{r}.json" for r in range(2)]
    out = snakemake(work, *PROFILE, "--configfile", "mine.yaml", *OWN_RESOURCES, "--set-resources",
                    "mpi_train_mpi_ranks2:mpi='mpiexec'", "--forcerun", "mpi_train_mpi_ranks2", "--", *targets,
                    env={"SLURM_CONF": str(cluster.conf)}, timeout=900)
    text = out.stdout + out.stderr
    [job_id] = submitted_rules(text)["mpi_train_mpi_ranks2"]
    assert job_id != first_job and "mpiexec -n 2" in text
    records = rank_records(work)
    assert [r["rank"] for r in records] == [0, 1] and all(r["ranks"] == 2 for r in records)
    assert {r["scheduler"]["SLURM_JOB_ID"] for r in records} == {job_id}
    job = cluster.run_client("scontrol", "show", "job", job_id).stdout
    assert "NumTasks=2" in job and "JobState=COMPLETED" in job, job


def test_no_slurm_process_outlives_the_run(slurm_run, cluster):
    """The workflow's jobs are over: only the three daemons carry the cluster's configuration."""
    assert not cluster.run_client("squeue", "-h").stdout.strip()
    daemons = {proc.pid for proc in cluster.procs.values()}
    others = [pid for pid in cluster.leftover_pids() if pid not in daemons]
    leftover = {pid: text for pid in others if (text := slurm_cluster.describe(pid)) and "slurmscriptd" not in text}
    assert not leftover, "\n".join(line for pid, text in leftover.items()
                                    for line in [text, *map(slurm_cluster.describe, slurm_cluster.descendants(pid))])


def test_slurm_profile_requeues_preempted_and_resubmits_failed_jobs():
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile["slurm-requeue"] is True and profile["retries"] >= 1


def test_a_preempted_training_job_resumes_to_the_weights_of_an_uncut_one(slurm_run, uncut_ensemble):
    """The requeued job started again in the same SLURM job, resumed rank 1 after epoch 2 and rank 0 wherever it
    had got, and ended with the weights of the same job never cut (run locally, 1 thread per rank); its row's
    times are empty (they cover only the resumed epochs), its accuracy counts, and the audit is clean."""
    work, log, preempted = slurm_run
    _, uncut = uncut_ensemble
    assert preempted["checkpointed"] and preempted["state"] == "RUNNING" and preempted["requeue"] == "1"
    assert preempted["restarts"] == "1" and preempted["end"] == "COMPLETED"
    records = preempted["records"]
    print(f"\npreempted in epoch 3/5, resumed from epochs {[r['resumed_from_epoch'] for r in records]}: "
          f"weights {[r['weights_sha256'] for r in records]}, uncut {uncut}")
    assert {r["scheduler"]["SLURM_JOB_ID"] for r in records} == {preempted["job_id"]}  # the same job, again
    assert [r["resumed_from_epoch"] for r in records] == [preempted["rank0_saved"], 2]
    assert [r["weights_sha256"] for r in records] == uncut
    text = preempted["log"]
    assert "resuming after epoch 2" in text and "ensemble_member rank 1/2 epoch 5/5: loss " in text
    assert not (work / "results" / "checkpoints").exists()
    rows = {(r["method"], r["ranks"]): r for r in csv.DictReader(open(work / "results" / "summary.csv"))}
    resumed = rows[("ensemble_majority", "2")]
    assert int(resumed["resumed_from_epoch"]) >= 2 and resumed["fit_seconds_max"] == resumed["job_seconds"] == ""
