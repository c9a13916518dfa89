"""Faults and bad input: each case is provoked for real and its outcome checked.

Cases 1-3, 7b and 8 fail while Snakemake parses the workflow or in the first job, so they run on throwaway
project copies. Cases 4-7a share one small project (`trained`: 2,000/500 images, 1 epoch, ranks 2 and 3 on
2 cores, so ranks 3 is oversubscribed); each of those tests puts the project into the state it needs, and
pytest runs them in file order so that each starts from the last one's complete results.
"""

import ast
import csv
import hashlib
import io as stdio
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import faults
from conftest import (BIN, BUNDLED, ENSEMBLE_RECORDS, RESUME, ROOT, assert_audit_clean, hooked, project_copy,
                      resume_point, snakemake)
from mpi_ensemble import data

pytestmark = pytest.mark.workflow

# The paper's rows alone (control_ranks=none): the faults below meet its jobs; the other methods share their code.
FAULTS = ["max_train_images=2000", "max_test_images=500", "epochs=1", "ranks=[2,3]", "seeds=[0]", "control_ranks=none",
          "baseline_threads=[1]"]
FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz"]
MODELS2 = Path("results/models/ranks2/seed0")
MODELS3 = Path("results/models/ranks3/seed0")
PROBS2 = Path("results/ensemble_majority/ranks2/seed0/probabilities.npy")
PROBS3 = Path("results/ensemble_majority/ranks3/seed0/probabilities.npy")
# The trained project's runs make the summary and the saved models (as rule all asks for them: Snakemake takes a
# deleted model for fine when nothing asks for it); the figures, tables and audit are other tests' business.
SUMMARY = ["results/summary.csv", "results/sequential/threads1/seed0/model.keras",
           *(f"results/models/ranks{n}/seed0/rank{r}.{ext}" for n in (2, 3) for r in range(n) for ext in ("keras", "json"))]
# Outputs that no case below should ever recompute once the first run made them.
KEPT = ["results/data/mnist/train_x.npy", "results/sequential/threads1/seed0/model.keras",
        "results/models/ranks3/seed0/rank0.keras"]


def text_of(result):
    return result.stdout + result.stderr


def note(case, text, needle):
    """Print (pytest -s) the line of `text` holding `needle`: the observed message, for the record."""
    line = next((line.strip() for line in text.splitlines() if needle in line), None)
    print(f"\ncase {case}: {line}")


def job_plan(text):
    """{rule: count} from the first 'Job stats' table Snakemake prints; {} when there is nothing to do."""
    if "Job stats:" not in text:
        return {}
    lines = text.split("Job stats:", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    plan = {}
    for line in lines[start:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        plan[parts[0]] = int(parts[1])
    return plan


def trainings(plan):
    """The jobs of a plan that make data or train a model: the expensive ones a recovery must not redo."""
    return {job for job in plan if job.startswith("train_") or job in ("fetch_data", "preprocess")}


def rank_processes(work):
    """PIDs of this project's rank processes (and their launcher) still alive."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if "mpi_ensemble train_mpi" in cmd and cwd == str(Path(work).resolve()):
            pids.append(int(proc.name))
    return pids


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def start_snakemake(work, *args, extra_env=None):
    """Snakemake in the background, in its own process group (so a test can Ctrl-C it like a terminal)."""
    cmd = [str(BIN / "snakemake"), "--cores", "2", *args]
    env = hooked({**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(extra_env or {})})
    return subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc, timeout):
    out, _ = proc.communicate(timeout=timeout)
    return out


def looks_complete(path):
    """Would a user (or Snakemake) take this file for a finished output?"""
    return path.is_file() and not path.name.startswith(".")


def complete_files(folder):
    return sorted(p.name for p in folder.iterdir() if looks_complete(p)) if folder.exists() else []


def mtimes(work, paths):
    return {p: (work / p).stat().st_mtime_ns for p in paths}


# ---------------------------------------------------------------- throwaway copies: input and config errors


@pytest.fixture(scope="module")
def blank(tmp_path_factory):
    """A fresh clone that has never run: every refusal below must leave it that way."""
    return project_copy(tmp_path_factory.mktemp("blank"))


def assert_nothing_ran(work):
    for name in ("results", "resources", "logs"):
        assert not (work / name).exists(), f"{name}/ was created although the run was refused"


def refuse(work, *args, env=None):
    out = snakemake(work, "--config", *FAULTS, *args, check=False, env=env)
    assert out.returncode != 0, text_of(out)
    assert_nothing_ran(work)
    return text_of(out)


@pytest.mark.parametrize(
    "override, key, why",
    [("ranks=[0]", "ranks", "less than the minimum of 1"),
     ("ranks=[-2]", "ranks", "-2 is less than the minimum of 1"),
     ("ranks=[1.5]", "ranks", "1.5 is not of type 'integer'"),
     ("seeds=[-1]", "seeds", "less than the minimum of 0"),
     ("epochs=0", "epochs", "less than the minimum of 1"),
     ("epochs=1.5", "epochs", "not of type 'integer'"),
     ("batch_size=-4", "batch_size", "less than the minimum of 1"),
     ("max_train_images=-100", "max_train_images", "less than the minimum of 1"),
     ("threads_per_rank=0", "threads_per_rank", "less than the minimum of 1"),
     ("validation_split=1.5", "validation_split", "greater than or equal to the maximum of 1"),
     ("validation_split=-0.1", "validation_split", "less than the minimum of 0"),
     ("bogus_key=1", "bogus_key", "Additional properties are not allowed"),
     ("dataset=cifar", "dataset", "'cifar' is not one of ['mnist'")],
)
def test_invalid_config_is_refused_before_any_job(blank, override, key, why):
    """Case 3: the schema refuses the value at parse time, naming the key; nothing is created."""
    text = refuse(blank, override)
    note(3, text, "ValidationError")
    assert "Error validating config" in text and why in text
    assert f"['{key}']" in text or f"'{key}'" in text  # the schema path (or the unknown key) names it


def test_invalid_config_file_is_refused_naming_the_key(blank, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: five\n")
    out = snakemake(blank, "--configfile", str(bad), check=False)
    assert out.returncode != 0
    assert "'five' is not of type 'integer'" in text_of(out) and "['epochs']" in text_of(out)
    assert_nothing_ran(blank)


def test_missing_data_dir_or_files_listed_in_one_error(blank, tmp_path):
    """Case 2: one error that lists what is missing and where it looked."""
    nowhere = tmp_path / "nowhere"
    text = refuse(blank, f"data_dir={nowhere}")
    note(2, text, "does not exist")
    assert f"data_dir {nowhere} does not exist" in text and all(name in text for name in FILES)
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in FILES[:2]:
        shutil.copy(BUNDLED / name, partial / name)
    text = refuse(blank, f"data_dir={partial}")
    note(2, text, "lacks")
    assert f"data_dir {partial} lacks 2 file(s): {FILES[2]}, {FILES[3]}." in text


@pytest.mark.parametrize(
    "overrides, message",
    [(["ranks=[4]", "max_train_images=6"], "ranks 4 with 6 training images leaves shards of 1 image(s), 0 to train on"),
     (["ranks=[2]", "max_train_images=4", "validation_split=0.6"],
      "ranks 2 with 4 training images leaves shards of 2 image(s), 0 to train on after validation_split 0.6")],
)
def test_more_ranks_than_the_subset_allows_is_refused(blank, overrides, message):
    """Case 7b: a shard left with nothing to train on is refused before any job, saying what to change."""
    text = refuse(blank, *overrides)
    note("7b", text, "leaves shards")
    assert message in text and "lower the ranks, raise max_train_images" in text


MPI_LAUNCHERS = ("mpiexec", "mpirun")


def path_without_mpi(shadows):
    """This PATH without any MPI launcher and without the project's .venv. A folder that holds a launcher (a
    system MPI puts one in /usr/bin, beside bash and which) is replaced by a folder of links to its other
    programs, so Snakemake still finds its shell."""
    folders = []
    for i, folder in enumerate(d for d in os.environ["PATH"].split(os.pathsep) if d and Path(d).is_dir()):
        if Path(folder).resolve() == BIN.resolve():
            continue
        names = os.listdir(folder)
        if any(name.split(".")[0] in MPI_LAUNCHERS for name in names):
            shadow = shadows / str(i)
            shadow.mkdir(parents=True)
            for name in names:
                if name.split(".")[0] not in MPI_LAUNCHERS:
                    (shadow / name).symlink_to(Path(folder) / name)
            folder = str(shadow)
        folders.append(folder)
    return os.pathsep.join(folders)


def test_missing_launcher_says_how_to_install(blank, tmp_path):
    """Case 8, both ways a user meets it: a Python environment without MPI (Snakemake installed elsewhere,
    no mpiexec on PATH), and a launcher named through --set-resources that does not exist."""
    no_mpi = tmp_path / "no-mpi-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(no_mpi)], check=True)
    path = path_without_mpi(tmp_path / "path")
    # .venv's packages and this project's (a plain path does not run the editable install's hook)
    packages = os.pathsep.join([sysconfig.get_paths()["purelib"], str(ROOT / "src")])
    env = {**os.environ, "PATH": path, "PYTHONPATH": packages, "TF_CPP_MIN_LOG_LEVEL": "2"}
    assert shutil.which("mpiexec", path=f"{no_mpi / 'bin'}{os.pathsep}{path}") is None
    out = subprocess.run([str(no_mpi / "bin" / "python"), "-m", "snakemake", "--cores", "2", "--config", *FAULTS],
                         cwd=blank, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    note(8, text_of(out), "MPI launcher")
    assert "MPI launcher 'mpiexec' is not on PATH" in text_of(out) and "pip package `mpich`" in text_of(out)
    assert_nothing_ran(blank)

    text = refuse(blank, "--set-resources", "train_mpi_ranks2:mpi=/opt/nowhere/bin/mpiexec")
    assert "MPI launcher '/opt/nowhere/bin/mpiexec' is not on PATH" in text and "pip package `mpich`" in text


def test_altered_or_truncated_data_refused_before_training(tmp_path):
    """Case 1: a file in data_dir altered, and a download cut short: refused in fetch_data with the name and
    both hashes; nothing stays in resources/ and no training starts."""
    work = project_copy(tmp_path / "work")
    source = tmp_path / "data"
    source.mkdir()
    for name in FILES:
        shutil.copy(BUNDLED / name, source / name)
    altered = bytearray(gzip_decompress(BUNDLED / FILES[1]))
    altered[5000] ^= 1  # one label changed, the file still a valid gzip
    write_gzip(source / FILES[1], bytes(altered))
    out = snakemake(work, "--config", *FAULTS, f"data_dir={source}", check=False)
    text = text_of(out)
    assert out.returncode != 0
    expected = hashlib.sha256(gzip_decompress(BUNDLED / FILES[1])).hexdigest()
    for needle in ("checksum mismatch", "expected", "actual"):
        note(1, text, needle)
    assert f"{source / FILES[1]}: checksum mismatch" in text
    assert f"expected {expected}" in text and f"actual   {hashlib.sha256(altered).hexdigest()}" in text
    assert_no_data_and_no_training(work)

    # A mirror that serves a half-written file: what an interrupted download leaves.
    for name in FILES:
        (work / "data" / "mnist" / name).unlink()  # no bundled copy: fetch_data downloads
    shutil.rmtree(work / "logs")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in FILES:
        shutil.copy(BUNDLED / name, mirror / name)
    full = (BUNDLED / FILES[2]).read_bytes()
    (mirror / FILES[2]).write_bytes(full[: len(full) // 2])
    out = snakemake(work, "--config", *FAULTS, f"mirrors=[file://{mirror}]", check=False)
    text = text_of(out)
    assert out.returncode != 0
    for needle in ("checksum mismatch", "ends early"):
        note(1, text, needle)
    assert f"file://{mirror}/{FILES[2]}: checksum mismatch" in text and "ends early (truncated)" in text
    expected = hashlib.sha256(gzip_decompress(BUNDLED / FILES[2])).hexdigest()
    assert f"expected {expected}" in text and "actual   " in text
    assert_no_data_and_no_training(work)


def gzip_decompress(path):
    import gzip

    return gzip.decompress(Path(path).read_bytes())


def write_gzip(path, raw):
    import gzip

    Path(path).write_bytes(gzip.compress(raw, mtime=0))


def assert_no_data_and_no_training(work):
    left = [p for p in (work / "resources").rglob("*") if p.is_file()] if (work / "resources").exists() else []
    assert left == [], f"files left in resources/: {left}"
    assert not (work / "results" / "data").exists() and not (work / "results" / "models").exists()


# ---------------------------------------------------------------------------- atomic writes (case 9)

WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from mpi_ensemble import atomic

    real_save = np.save

    def save_then_hang(handle, array):
        # Write half the payload for real, then stall so the parent can SIGKILL us mid-write.
        real_save(handle, array[: len(array) // 2])
        handle.flush()
        print("half written", flush=True)
        time.sleep(600)

    np.save = save_then_hang
    atomic.write_npy(sys.argv[1], np.arange(1_000_000, dtype=np.float32))
""")


@pytest.mark.parametrize("existing", [False, True])
def test_writer_killed_mid_write_leaves_no_half_file(tmp_path, existing):
    """Case 9: SIGKILL a real writer halfway through atomic.write_npy: the destination is absent (or still the
    previous complete file); only a dot-named temporary remains, which nobody mistakes for the output."""
    dest = tmp_path / "out" / "train_x.npy"
    dest.parent.mkdir()
    old = np.arange(10, dtype=np.float32)
    if existing:
        np.save(dest, old)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dest)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "half written"
    temporaries = list(dest.parent.glob(".train_x.tmp*.npy"))
    assert len(temporaries) == 1 and temporaries[0].stat().st_size > 1_000_000  # really mid-write
    proc.kill()
    proc.wait(timeout=30)
    print(f"\ncase 9: killed mid-write; left {sorted(p.name for p in dest.parent.iterdir())}")
    if existing:
        np.testing.assert_array_equal(np.load(dest), old)
    else:
        assert not dest.exists()
    assert complete_files(dest.parent) == (["train_x.npy"] if existing else [])


PACKAGE = {p.stem for p in (ROOT / "src" / "mpi_ensemble").glob("*.py")}


def writes_in(tree):
    """(line, destination expression) of every call in `tree` that creates or overwrites a file."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name):
            if func.id == "open":
                mode = node.args[1] if len(node.args) > 1 else next(
                    (k.value for k in node.keywords if k.arg == "mode"), None)
                if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
                    yield node.lineno, node.args[0]
            continue
        if not isinstance(func, ast.Attribute) or (isinstance(func.value, ast.Name) and func.value.id in PACKAGE):
            continue  # io.write_json, plots.save: the package's own writers, audited in their modules
        name = func.attr
        if name == "open" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                and set(str(node.args[1].value)) & set("wax+"):
            yield node.lineno, node.args[0]  # gzip.open(path, "wb") and the like
        elif name in ("save", "savefig", "savez", "savez_compressed", "to_csv", "dump") and node.args:
            yield node.lineno, node.args[0]
        elif name in ("copyfile", "copy", "copy2", "move") and len(node.args) > 1:
            yield node.lineno, node.args[1]
        elif name in ("write_text", "write_bytes", "touch"):
            target = func.value  # Path(x).write_text(...): x is written
            if isinstance(target, ast.Call) and getattr(target.func, "id", "") == "Path" and target.args:
                target = target.args[0]
            yield node.lineno, target


def atomic_names(tree):
    """Names bound by `with atomic_path(...) as NAME`, and file handles opened on them."""
    names, grew = set(), True
    while grew:
        grew = False
        for node in ast.walk(tree):
            if not isinstance(node, ast.With):
                continue
            for item in node.items:
                call, var = item.context_expr, item.optional_vars
                if not (isinstance(call, ast.Call) and isinstance(var, ast.Name)) or var.id in names:
                    continue
                func = call.func
                fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if fname == "atomic_path" or (
                    fname == "open" and call.args and isinstance(call.args[0], ast.Name) and call.args[0].id in names
                ):
                    names.add(var.id)
                    grew = True
    return names


def test_every_output_is_written_through_atomic_path():
    """Case 9, everywhere: each call in the package that writes a file writes a temporary of atomic_path."""
    offenders, found = [], 0
    for source in sorted((ROOT / "src" / "mpi_ensemble").glob("*.py")):
        tree = ast.parse(source.read_text())
        allowed = atomic_names(tree)
        for line, dest in writes_in(tree):
            found += 1
            if not (isinstance(dest, ast.Name) and dest.id in allowed):
                offenders.append(f"{source.name}:{line}: writes {ast.unparse(dest)} directly")
    assert offenders == [], "\n".join(offenders)
    assert found >= 6  # copies, downloads, figures, models, bytes and arrays: all seen
    # The check can fail: direct writes are caught.
    bad = ast.parse("with open(path, 'w') as h:\n    h.write('x')\nfig.savefig(out)\nPath(p).write_text('x')\n"
                    "with atomic_path(path) as tmp:\n    net.save(tmp)\n")
    assert [ast.unparse(d) for _, d in sorted(writes_in(bad), key=lambda w: w[0])] == ["path", "out", "p", "tmp"]
    assert atomic_names(bad) == {"tmp"}


# ------------------------------------------------------------- one trained project: cases 4, 5, 6, 7a, 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The workflow once as far as its summary, uninterrupted: the reference every recovery must reproduce."""
    work = project_copy(tmp_path_factory.mktemp("trained"))
    out = snakemake(work, *SUMMARY, "--config", *FAULTS)
    return {
        "work": work,
        "output": text_of(out),
        "probs2": np.load(work / PROBS2),
        "probs3": np.load(work / PROBS3),
        "summary": (work / "results" / "summary.csv").read_text(),
        "kept": mtimes(work, KEPT),
    }


def accuracy_by_row(summary):
    return {(r["method"], r["ranks"], r["threads"]): r["accuracy"] for r in csv.DictReader(stdio.StringIO(summary))}


def assert_same_results_as_uninterrupted(trained):
    work = trained["work"]
    np.testing.assert_allclose(np.load(work / PROBS2), trained["probs2"], atol=1e-6)
    np.testing.assert_allclose(np.load(work / PROBS3), trained["probs3"], atol=1e-6)
    assert accuracy_by_row((work / "results" / "summary.csv").read_text()) == accuracy_by_row(trained["summary"])
    assert mtimes(work, KEPT) == trained["kept"], "an output that was complete has been recomputed"


def test_more_ranks_than_cores_runs_oversubscribed_with_a_warning(trained):
    """Case 7a: 3 ranks on 2 cores run, warned about at parse time and by rank 0, marked in summary.csv."""
    note("7a", trained["output"], "Warning: ranks")
    assert "Warning: ranks 3 exceed the 2 core(s) Snakemake may use" in trained["output"]
    log = (trained["work"] / "logs" / "train_mpi" / "ranks3" / "seed0.log").read_text()
    assert "warning: 3 ranks x 1 thread(s) exceed the job's 2 cores" in log
    rows = csv.DictReader(stdio.StringIO(trained["summary"]))
    oversubscribed = {(r["method"], r["ranks"]): r["oversubscribed"] for r in rows}
    assert {("sequential", "1"), ("ensemble_majority", "2"), ("ensemble_majority", "3")} <= set(oversubscribed)
    # Every result of a 3-rank job is marked, and nothing else.
    assert {key: flag for key, flag in oversubscribed.items()} == {
        (method, n): "True" if n == "3" else "False" for method, n in oversubscribed}


def test_rank_crash_fails_the_whole_job_and_only_that_job_reruns(trained, tmp_path):
    """Case 4: rank 1 of 2 raises after its epoch while rank 0 is held inside its training (a hook that never
    returns): the job can only end if the crash takes rank 0 down with it (MPI_Abort), not by rank 0 finishing.
    Snakemake removes the job's outputs, and the next run plans that job and what depends on it, nothing else."""
    work = trained["work"]
    hold = {faults.CRASH_ENV: "1", faults.HOLD_ENV: "0", faults.HOLD_FILE_ENV: str(tmp_path / "hold")}
    out = snakemake(work, *SUMMARY, "--config", *FAULTS, "--forcerun", "train_mpi_ranks2", env=hold, check=False,
                    timeout=300)
    ended = time.time()
    assert out.returncode != 0
    assert (tmp_path / "hold.rank0").exists(), "rank 0 never reached its hold: the test proved nothing"
    log = (work / "logs" / "train_mpi" / "ranks2" / "seed0.log").read_text()
    crash_line = next(line for line in log.splitlines() if "crash injected through MPI_ENSEMBLE_CRASH_RANK" in line)
    crashed_at = float(crash_line.rsplit("unix time ", 1)[1].split()[0])
    print(f"\ncase 4: {crash_line.strip()!r}; Snakemake exited {ended - crashed_at:.1f} s after the crash")
    assert "Error in rule train_mpi_ranks2" in text_of(out)
    wait_for(lambda: not rank_processes(work), 10, "no rank process to survive the crash")
    assert complete_files(work / MODELS2) == []

    plan = job_plan(text_of(snakemake(work, *SUMMARY, "--config", *FAULTS, "-n")))
    assert trainings(plan) == {"train_mpi_ranks2"} and plan["train_mpi_ranks2"] == 1
    assert plan["ensemble"] == 1 and plan["summarize"] == 1


def test_interrupted_run_resumes_to_the_same_results_and_a_second_run_is_locked_out(trained, tmp_path):
    """Case 5 (SIGINT to the process group, as Ctrl-C; SIGTERM to Snakemake alone, as `kill`) and case 10
    (a second Snakemake in the same directory while the first one trains)."""
    work = trained["work"]
    # Resuming relies on rerun-incomplete from the default profile, which Snakemake must have found.
    assert "Using workflow specific profile profiles/default" in trained["output"]
    shutil.rmtree(work / MODELS2, ignore_errors=True)  # the state case 4 leaves, even when run alone
    log = work / "logs" / "train_mpi" / "ranks2" / "seed0.log"
    log.unlink(missing_ok=True)

    held = tmp_path / "hold"
    first = start_snakemake(work, *SUMMARY, "--config", *FAULTS,
                            extra_env={faults.HOLD_ENV: "0", faults.HOLD_FILE_ENV: str(held)})
    try:
        # Rank 0 announces that it is inside its first epoch, and stays there: the interrupt meets training.
        wait_for(lambda: Path(f"{held}.rank0").exists(), 180, "rank 0 to start training")
        # Case 10: a second run in the same directory, while the first one trains.
        second = snakemake(work, *SUMMARY, "--config", *FAULTS, check=False)
        note(10, text_of(second), "Directory cannot be locked")
        assert second.returncode != 0 and "LockException" in text_of(second)
        assert "Directory cannot be locked" in text_of(second) and first.poll() is None
        interrupted = time.monotonic()
        os.killpg(first.pid, signal.SIGINT)
        output = finish(first, 120)
        print(f"\ncase 5: SIGINT -> Snakemake exited after {time.monotonic() - interrupted:.1f} s")
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    note(5, output, "Terminating processes")
    # Ctrl-C reaches Snakemake and the ranks at once: whichever Snakemake notices first (its own interrupt, or the
    # job that the interrupt killed), it must stop with an error, and the next run must plan that job again.
    assert first.returncode != 0
    assert "Terminating processes on user request" in output or "did not complete successfully" in output
    wait_for(lambda: not rank_processes(work), 10, "no rank process to survive Ctrl-C")
    locks = work / ".snakemake" / "locks"
    assert not locks.exists() or not list(locks.iterdir()), "the interrupted run left its lock"
    assert job_plan(text_of(snakemake(work, *SUMMARY, "--config", *FAULTS, "-n")))["train_mpi_ranks2"] == 1

    # SIGTERM: Snakemake lets the running job finish, starts nothing new, and exits.
    before = (work / PROBS2).stat().st_mtime_ns  # the first run's ensemble, still there
    first = start_snakemake(work, *SUMMARY, "--config", *FAULTS)
    try:
        wait_for(lambda: rank_processes(work), 120, "the ranks to start")
        first.send_signal(signal.SIGTERM)
        output = finish(first, 300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    note(5, output, "Will exit after finishing")
    assert "Will exit after finishing currently running jobs" in output
    assert all(zipfile.is_zipfile(work / MODELS2 / f"rank{r}.keras") for r in range(2))
    assert (work / PROBS2).stat().st_mtime_ns == before  # the ensemble did not start after SIGTERM

    rerun = snakemake(work, *SUMMARY, "--config", *FAULTS)
    plan = job_plan(text_of(rerun))
    assert trainings(plan) == set() and plan["ensemble"] == 1 and plan["summarize"] == 1  # the training is kept
    assert_same_results_as_uninterrupted(trained)


def test_damaged_or_deleted_model_reruns_ensemble_and_summary(trained):
    """Case 6. A truncated model (newer than the ensemble's outputs) reruns the ensemble, which refuses it
    naming the file; once deleted, its training job, the ensemble and the report rerun to the same results."""
    work = trained["work"]
    snakemake(work, *SUMMARY, "--config", *FAULTS)  # complete, whatever ran before
    model = work / MODELS3 / "rank1.keras"
    blob = model.read_bytes()
    model.write_bytes(blob[: len(blob) // 2])
    out = snakemake(work, *SUMMARY, "--config", *FAULTS, check=False)
    text = text_of(out)
    note(6, text, "not a valid .keras file")
    plan = job_plan(text)
    assert out.returncode != 0 and trainings(plan) == set() and plan["ensemble"] == 1
    assert f"{MODELS3 / 'rank1.keras'}: not a valid .keras file" in text and "delete it and rerun" in text

    model.unlink()
    plan = job_plan(text_of(snakemake(work, *SUMMARY, "--config", *FAULTS, "-n")))
    assert trainings(plan) == {"train_mpi_ranks3"} and plan["ensemble"] == 1 and plan["summarize"] == 1
    snakemake(work, *SUMMARY, "--config", *FAULTS)
    assert json.loads((work / MODELS3 / "rank1.json").read_text())["oversubscribed"] is True
    np.testing.assert_allclose(np.load(work / PROBS3), trained["probs3"], atol=1e-6)
    assert accuracy_by_row((work / "results" / "summary.csv").read_text()) == accuracy_by_row(trained["summary"])


# ------------------------------------------------------------------ a data-parallel replica that drifts


def test_data_parallel_catches_a_diverging_rank(tmp_path):
    """The allreduce keeps replicas identical; a rank that drifts (test hook) is caught and fails the job, and no
    model or result is left that looks complete."""
    outs = {name: tmp_path / f"{name}.npy" for name in data.ARRAY_NAMES}
    data.preprocess([BUNDLED / n for n in data.file_names("mnist")], outs, "mnist", 600, 100)
    out_dir = tmp_path / "dp"
    cmd = [str(BIN / "mpiexec"), "-n", "2", str(BIN / "python"), "-m", "mpi4py", "-m", "mpi_ensemble",
           "train_data_parallel", "--threads", "1", "--job-cores", "2", "--seed", "0", "--epochs", "1",
           "--batch-size", "32", "--validation-split", "0.2", "--out-dir", str(out_dir),
           *(f"--{k.replace('_', '-')}={v}" for k, v in outs.items())]
    env = hooked({**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT / "src"), faults.DIVERGE_ENV: "1"})
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode != 0
    assert "diverged" in text_of(run) and "rank(s) [1]" in text_of(run)
    sums = [json.loads((out_dir / f"rank{r}.json").read_text())["weights_sha256"] for r in range(2)]
    assert sums[0] != sums[1]
    assert complete_files(out_dir) == ["rank0.json", "rank1.json"]


# ------------------------------------------------- killed mid-training, rerun: resumed, bitwise the same model



def hold_env(hold, rank, epoch):
    return {faults.HOLD_ENV: str(rank), faults.HOLD_FILE_ENV: str(hold), faults.HOLD_EPOCH_ENV: str(epoch)}


def held_pid(hold, rank, timeout=240):
    """Wait until `rank` announces it is held (its hold file), and return its PID."""
    announce = Path(f"{hold}.rank{rank}")
    wait_for(announce.exists, timeout, f"rank {rank} to reach its hold")
    return int(announce.read_text().split()[0])


def weight_hashes(paths):
    """The weights' SHA-256 in rank records, or in a result's (the sequential run's) rank timing."""
    records = [json.loads(Path(p).read_text()) for p in paths]
    return [r["weights_sha256"] if "weights_sha256" in r else r["rank_timing"][0]["weights_sha256"] for r in records]


def test_rank_killed_in_epoch_2_then_run_again_resumes_and_audits_clean(uncut_ensemble, tmp_path):
    """The journey of a user whose run loses a rank: rank 1 of a 2-rank ensemble job, run by Snakemake, is
    SIGKILLed as its epoch 2 of 5 starts. Snakemake fails the job and deletes its outputs; the checkpoints (outside
    them) stay. `snakemake` again runs the whole workflow: the job resumes each rank after its last saved epoch,
    both models are bitwise those of an uninterrupted run, the resumed row's times and traffic are empty (they cover
    only the epochs after the checkpoint), and the run's own audit is clean."""
    work, reference = uncut_ensemble
    assert weight_hashes(work / p for p in ENSEMBLE_RECORDS) == reference
    assert not (work / "results" / "checkpoints").exists()  # the successful job removed its checkpoints
    log = work / "logs" / "train_mpi" / "ranks2" / "seed0.log"
    assert "ensemble_member rank 1/2 epoch 5/5: loss " in log.read_text()

    hold = tmp_path / "hold"
    run = start_snakemake(work, "--config", *RESUME, "--forcerun", "train_mpi_ranks2", "--", *ENSEMBLE_RECORDS,
                          extra_env=hold_env(hold, 1, 2))
    try:
        pid = held_pid(hold, 1)
        saved = work / "results" / "checkpoints" / "models" / "ranks2" / "seed0"
        assert [p.name for p in (saved / "rank1").iterdir()] == ["epoch1"]
        # Written as it happens, while the job still runs; mpiexec forwards the rank's output on its own time, so
        # wait for the line rather than expect it there the moment the rank holds.
        wait_for(lambda: "ensemble_member rank 1/2 epoch 1/5: loss " in log.read_text(), 30, "epoch 1's progress line")
        assert "rank 1/2 epoch 2/5" not in log.read_text()
        os.kill(pid, signal.SIGKILL)
        output = finish(run, 120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode != 0 and "Error in rule train_mpi_ranks2" in output
    assert complete_files(work / MODELS2) == []  # Snakemake removed the failed job's outputs ...
    assert (saved / "rank1" / "epoch1" / "state.npz").is_file()  # ... but not the checkpoints
    # Rank 0 trains on independently, so it got as far as it got when the job went down.
    rank0_saved = resume_point(saved / "rank0")

    snakemake(work, "--config", *RESUME)  # the user runs the workflow again, as the README says
    records = [json.loads((work / p).read_text()) for p in ENSEMBLE_RECORDS]
    print(f"\nensemble rank 1 killed in epoch 2/5: resumed ranks from epochs "
          f"{[r['resumed_from_epoch'] for r in records]}; weights {[r['weights_sha256'] for r in records]}, "
          f"uninterrupted {reference}")
    assert [r["resumed_from_epoch"] for r in records] == [rank0_saved, 1]
    assert [r["weights_sha256"] for r in records] == reference
    assert f"checkpoint {Path('results/checkpoints/models/ranks2/seed0/rank1/epoch1')}: resuming after epoch 1" \
        in log.read_text()
    history = (work / MODELS2 / "rank1_history.csv").read_text().splitlines()
    assert [line.rsplit(",", 1)[1] for line in history[1:]] == ["True", "False", "False", "False", "False"]
    assert not (work / "results" / "checkpoints").exists()
    assert_audit_clean(work)
    rows = {(r["method"], r["ranks"]): r for r in csv.DictReader(open(work / "results" / "summary.csv"))}
    resumed = rows[("ensemble_majority", "2")]
    assert resumed["resumed_from_epoch"] == str(max(rank0_saved, 1)) and resumed["resumed_exactly"] == "True"
    assert resumed["fit_seconds_max"] == resumed["speedup"] == resumed["allreduces_per_rank"] == ""
    assert float(resumed["accuracy"]) > 0.3 and rows[("sequential", "1")]["fit_seconds_max"] != ""


@pytest.fixture(scope="module")
def small_arrays(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arrays")
    outs = {name: folder / f"{name}.npy" for name in data.ARRAY_NAMES}
    data.preprocess([BUNDLED / n for n in data.file_names("mnist")], outs, "mnist", 600, 100)
    return outs


def trainer(command, arrays, out, checkpoints, epochs=5, ranks=None, extra=()):
    """The command line of one training job, as the rules write it (`ranks`: under mpiexec)."""
    args = ["-m", "mpi_ensemble", command, "--threads", "1", "--job-cores", "2", "--seed", "0", "--epochs",
            str(epochs), "--batch-size", "32", "--validation-split", "0.2", "--checkpoint-dir", str(checkpoints),
            *(f"--{k.replace('_', '-')}={v}" for k, v in arrays.items()), *extra]
    args += ["--out-dir", str(out)] if ranks else ["--model", str(out / "model.keras"),
                                                   "--result", str(out / "result.json"),
                                                   "--history", str(out / "history.csv")]
    python = [str(BIN / "python")]
    return [str(BIN / "mpiexec"), "-n", str(ranks), *python, "-m", "mpi4py", *args] if ranks else python + args


def launch(cmd, extra_env=None):
    env = hooked({**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT / "src"), **(extra_env or {})})
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_to_end(cmd, extra_env=None):
    proc = launch(cmd, extra_env)
    output = finish(proc, 600)
    assert proc.returncode == 0, output[-4000:]
    return output


def stop_held(cmd, hold, rank, epoch, sig):
    """Start a job, wait for `rank` to hold as `epoch` starts, send it `sig`; (its exit status, seconds until the
    job ended, output)."""
    proc = launch(cmd, hold_env(hold, rank, epoch))
    try:
        pid = held_pid(hold, rank)
        stopped = time.monotonic()
        os.kill(pid, sig)
        output = finish(proc, 120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, time.monotonic() - stopped, output


def test_data_parallel_rank_killed_in_epoch_3_resumes_to_the_same_weights(small_arrays, tmp_path):
    """Rank 1 of 2 SIGKILLed as epoch 3 of 5 starts: the launcher takes the job down; rank 0's checkpoint of
    epoch 2 serves both ranks on the rerun, whose model is bitwise the uninterrupted one's. The rerun gives rank 1
    alone a kernel variable that was not set before (at its default value, so the bits stay): every rank compares
    its own environment with the checkpoint's, so the resume is recorded as not bitwise, naming rank 1."""
    checkpoints = tmp_path / "checkpoints" / "dp"
    clean, cut = tmp_path / "clean", tmp_path / "cut"
    run_to_end(trainer("train_data_parallel", small_arrays, clean, checkpoints, ranks=2))
    assert not checkpoints.exists()
    [reference] = set(weight_hashes(clean / f"rank{r}.json" for r in range(2)))

    status, _, output = stop_held(trainer("train_data_parallel", small_arrays, cut, checkpoints, ranks=2),
                                  tmp_path / "hold", 1, 3, signal.SIGKILL)
    assert status != 0 and not (cut / "model.keras").exists(), output[-3000:]
    assert [p.name for p in (checkpoints / "rank0").iterdir()] == ["epoch2"]

    launcher, _, ranks, *rank_command = trainer("train_data_parallel", small_arrays, cut, checkpoints, ranks=2)
    output = run_to_end([launcher, "-n", "1", *rank_command, ":", "-n", "1", "-env", "ONEDNN_DEFAULT_FPMATH_MODE",
                         "strict", *rank_command])
    records = [json.loads((cut / f"rank{r}.json").read_text()) for r in range(2)]
    print(f"\ndata-parallel rank 1 killed in epoch 3/5: resumed from epoch {records[0]['resumed_from_epoch']}; "
          f"weights {records[0]['weights_sha256']}, uninterrupted {reference}; changes {records[0]['resume_changes']}")
    assert [r["resumed_from_epoch"] for r in records] == [2, 2]
    assert {r["weights_sha256"] for r in records} == {reference}
    for record in records:
        assert record["resumed_exactly"] is False
        [change] = record["resume_changes"]
        assert change.startswith("rank 1: kernel_env: ") and "ONEDNN_DEFAULT_FPMATH_MODE" in change
    assert "data_parallel rank 1/2 epoch 3/5: loss " in output and "rank 1/2 epoch 2/5" not in output
    assert len((cut / "history.csv").read_text().splitlines()) == 1 + 5
    assert not checkpoints.exists()


def test_sequential_stopped_by_sigterm_resumes_and_other_epochs_are_discarded(small_arrays, tmp_path):
    """SIGTERM (what SLURM sends on preemption) ends a held sequential run at once, non-zero, and leaves a checkpoint
    that verifies. A checkpoint made with epochs=3 is discarded by an epochs=5 job, naming the difference; the
    epochs=5 job, stopped the same way in epoch 3, resumes after epoch 2 to the uninterrupted run's weights."""
    checkpoints = tmp_path / "checkpoints" / "sequential"
    clean, cut = tmp_path / "clean", tmp_path / "cut"
    run_to_end(trainer("train_sequential", small_arrays, clean, checkpoints))
    [reference] = weight_hashes([clean / "result.json"])

    status, seconds, _ = stop_held(trainer("train_sequential", small_arrays, cut, checkpoints, epochs=3),
                                   tmp_path / "hold3", 0, 3, signal.SIGTERM)
    print(f"\nSIGTERM: exit status {status} after {seconds:.2f} s")
    assert status == -signal.SIGTERM and seconds < 10
    assert [p.name for p in (checkpoints / "rank0").iterdir()] == ["epoch2"]  # whole: no temporary left

    status, _, output = stop_held(trainer("train_sequential", small_arrays, cut, checkpoints),
                                  tmp_path / "hold5", 0, 3, signal.SIGTERM)
    discarded = f"checkpoint {checkpoints / 'rank0' / 'epoch2'} discarded: made with other settings " \
                "(epochs: checkpoint 3, this job 5)"
    note("resume", output, "discarded")
    assert status == -signal.SIGTERM and discarded in output
    assert "sequential rank 0/1 epoch 1/5: loss " in output  # trained from the start

    output = run_to_end(trainer("train_sequential", small_arrays, cut, checkpoints))
    record = json.loads((cut / "result.json").read_text())
    print(f"sequential stopped in epoch 3/5: resumed from epoch {record['resumed_from_epoch']}; weights "
          f"{weight_hashes([cut / 'result.json'])[0]}, uninterrupted {reference}")
    assert record["resumed_from_epoch"] == 2 and "resuming after epoch 2" in output
    assert weight_hashes([cut / "result.json"]) == [reference]
    assert not checkpoints.exists()


@pytest.mark.parametrize("command, extra", [("train_data_parallel", []), ("train_local_sgd", ["--period", "epoch"])])
def test_no_rank_fit_time_counts_a_slow_checkpoint_write(small_arrays, tmp_path, command, extra):
    """Rank 0's checkpoint store takes 3 s longer per write (an injected slow store). The other rank waits for it
    before the next epoch starts, outside its clock, as rank 0 times its own write apart: no rank's fit time grows
    by as much as the one write between the two epochs (before, the waiting rank counted it)."""
    fits = {}
    for name, env in (("normal", {}), ("slow", {faults.SLOW_CHECKPOINT_ENV: "0:3"})):
        out = tmp_path / name
        run_to_end(trainer(command, small_arrays, out, tmp_path / "checkpoints" / name, epochs=2, ranks=2,
                           extra=extra), env)
        records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
        fits[name] = [r["fit_seconds"] for r in records]
        for r in records:
            assert r["fit_seconds"] == pytest.approx(sum(r["epoch_seconds"]), abs=0.5)  # the epochs, and the end
        if name == "slow":
            assert records[0]["checkpoint_seconds"] >= 2 * 3  # the store really was slow
    print(f"\n{command}: fit seconds per rank {fits['normal']} -> {fits['slow']} with a 3 s slower checkpoint")
    assert all(slow < normal + 1.5 for slow, normal in zip(fits["slow"], fits["normal"])), fits


def test_local_sgd_rank_killed_in_epoch_3_resumes_to_the_same_weights(small_arrays, tmp_path):
    """Local SGD, 2 ranks averaging every 4 steps: rank 1 SIGKILLed as epoch 3 of 5 starts. Each rank keeps its own
    checkpoints (their weights differ between averagings); the rerun resumes both from the newest epoch they both
    saved, and the averaged model is bitwise the uninterrupted one's."""
    checkpoints = tmp_path / "checkpoints" / "local_sgd"
    clean, cut = tmp_path / "clean", tmp_path / "cut"
    command = trainer("train_local_sgd", small_arrays, clean, checkpoints, ranks=2, extra=["--period", "4"])
    run_to_end(command)
    assert not checkpoints.exists()
    [reference] = set(weight_hashes(clean / f"rank{r}.json" for r in range(2)))

    command = trainer("train_local_sgd", small_arrays, cut, checkpoints, ranks=2, extra=["--period", "4"])
    status, _, output = stop_held(command, tmp_path / "hold", 1, 3, signal.SIGKILL)
    assert status != 0 and not (cut / "model.keras").exists(), output[-3000:]
    assert [resume_point(checkpoints / f"rank{r}") for r in range(2)] == [2, 2]

    output = run_to_end(command)
    records = [json.loads((cut / f"rank{r}.json").read_text()) for r in range(2)]
    print(f"\nlocal SGD rank 1 killed in epoch 3/5: resumed from epochs {[r['resumed_from_epoch'] for r in records]}; "
          f"weights {records[0]['weights_sha256']}, uninterrupted {reference}")
    assert [r["resumed_from_epoch"] for r in records] == [2, 2] and all(r["resumed_exactly"] for r in records)
    assert {r["weights_sha256"] for r in records} == {reference}
    assert "local_sgd rank 1/2 epoch 3/5: loss " in output and "rank 1/2 epoch 2/5" not in output
    assert not checkpoints.exists()
