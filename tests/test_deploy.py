"""Deployment: the workflow as a module in a user's own folder, the software stacks stating the same pins, the
launcher found inside a conda job's environment, one version number, and the prerequisites the Makefile checks."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import BIN, ROOT, assert_audit_clean, project_copy, snakemake

import mpi_ensemble

TINY = {"max_train_images": 2000, "max_test_images": 500, "epochs": 1, "ranks": [2], "seeds": [0],
        "baseline_threads": [1], "control_ranks": "none"}
# conda-forge's names for what pip calls otherwise (same library, same version)
CONDA_TO_PIP = {"matplotlib-base": "matplotlib"}


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins():
    """envs/requirements.txt (the .venv's pinned set) as {name: version}."""
    lines = (ROOT / "envs" / "requirements.txt").read_text().splitlines()
    return {canonical(n): v for n, v in (line.split("==") for line in lines if line and not line.startswith("#"))}


def conda_env_pins(path):
    """{name: version} of a conda env file, its conda and its pip dependencies; python and pip left out."""
    pins = {}
    for dep in yaml.safe_load(path.read_text())["dependencies"]:
        for spec in dep["pip"] if isinstance(dep, dict) else [dep]:
            name, _, version = spec.replace(" ", "").replace("==", "=").partition("=")
            pins[canonical(CONDA_TO_PIP.get(name, name))] = version
    return {name: version for name, version in pins.items() if name not in ("python", "pip")}


# --- the software stacks state the same pins --------------------------------------------------------------


def test_conda_envs_and_the_package_pin_what_the_pip_set_pins():
    """Every package a conda env or pyproject names is pinned to the very version of envs/requirements.txt, the
    set every reference run used (MPICH 5.0.2 included); a conda pin that only names a series (=4) fails."""
    pins = requirement_pins()
    assert pins["mpich"] == "5.0.2"
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert [p.name for p in envs] == ["data.yaml", "summarize.yaml", "train.yaml"]
    for path in envs:
        stated = conda_env_pins(path)
        assert stated and stated == {name: pins.get(name) for name in stated}, path.name
    assert conda_env_pins(ROOT / "envs" / "train.yaml")["mpich"] == "5.0.2"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["mpich"]:
        name, version = spec.split("==")
        assert pins[canonical(name)] == version, spec
    python = {yaml.safe_load(p.read_text())["dependencies"][0] for p in envs}
    assert python == {"python =3.11"} and project["requires-python"] == ">=3.11"


def test_conda_env_pin_parsing_sees_a_loose_or_wrong_pin(tmp_path):
    (tmp_path / "env.yaml").write_text("dependencies:\n  - python =3.11\n  - mpich =4\n  - pip\n  - pip:\n"
                                       "      - keras==3.0.0\n")
    assert conda_env_pins(tmp_path / "env.yaml") == {"mpich": "4", "keras": "3.0.0"}


def test_every_conda_env_installs_the_package_of_this_version():
    """Each env's post-deploy script pip-installs this workflow's package from where the workflow was read;
    its text names the version, so that a new version gives new envs (Snakemake hashes the script)."""
    for env in ("data", "train", "summarize"):
        script = (ROOT / "envs" / f"{env}.post-deploy.sh").read_text()
        assert f"mpi-ensemble {mpi_ensemble.__version__}" in script
        assert "source=${MPI_ENSEMBLE_SOURCE:?" in script and 'pip install --no-deps "$source"' in script


# --- every rule's env holds what its code imports ------------------------------------------------------------


def env_closure(pins):
    """The distributions of .venv (this test's Python) that an env of these pins holds: each pin and, recursively,
    what it requires here (markers evaluated, no extras)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    found, todo = {}, list(pins)
    while todo:
        name = canonical(todo.pop())
        if name in found:
            continue
        found[name] = dist = metadata.distribution(name)
        for spec in dist.requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def env_venv(env_file, dest):
    """A venv that holds only what `env_file` pins (their files linked from .venv), and this workflow's package,
    as the env's post-deploy script installs it; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    site = dest / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    for dist in env_closure(conda_env_pins(env_file)).values():
        for file in dist.files or []:
            target = Path(os.path.normpath(site / file))  # libraries and launchers sit in ../../ of site-packages
            if target.is_relative_to(dest) and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(dist.locate_file(file))
    (site / "mpi_ensemble.pth").write_text(f"{ROOT / 'src'}\n")
    return dest / "bin" / "python"


def rule_envs():
    """{CLI sub-command: its rule's env}, read from the rule files: each rule's `conda:` and the sub-command its
    shell calls (the rules of methods.TOGETHER call theirs through params.command)."""
    from mpi_ensemble import methods

    found = {}
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=[ \t]*rule\b)", "\n" + smk.read_text())[1:]:
            env = re.search(r'conda:\s*"\.\./\.\./envs/(\w+)\.yaml"', block)[1]
            calls = re.findall(r"\{CLI\} (\w+)", block) + re.findall(r'mpi_shell\("(\w+)"', block)
            calls += [m.train for m in methods.TOGETHER] if "{params.command}" in block else []
            found.update((call, env) for call in calls)
    return found


def imported_names(module):
    """(third-party packages, modules of this package) that a module of mpi_ensemble imports anywhere in it."""
    tree = ast.parse((ROOT / "src" / "mpi_ensemble" / f"{module}.py").read_text())
    outside, inside = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            outside.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            inside.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom):
            outside.add(node.module.split(".")[0])
    return outside - set(sys.stdlib_module_names), inside


def imports_of(sub_command):
    """Every third-party package the code of a sub-command can import: what cli.py imports at its top, the modules
    its function for the sub-command imports, and everything those import, anywhere in them."""
    tree = ast.parse((ROOT / "src" / "mpi_ensemble" / "cli.py").read_text())
    [function] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == sub_command]
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    outside = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    todo = [a.name for n in [*top, *ast.walk(function)] if isinstance(n, ast.ImportFrom) and n.level for a in n.names]
    outside -= set(sys.stdlib_module_names)
    seen = set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            found, inside = imported_names(module)
            outside |= found
            todo += inside
    return outside, seen


def test_every_rules_env_holds_what_its_code_imports(tmp_path):
    """--sdm conda: in a venv built from only an env's pins (and the package, as its post-deploy script installs
    it), every module the code of each of that env's rules can import imports: its sub-command's modules of this
    package and every third-party package they name, anywhere in them (the audit's pandas and Pillow were missing
    from envs/train.yaml once)."""
    from mpi_ensemble import cli

    envs = rule_envs()
    assert set(envs) == set(cli.build_parser()._subparsers._group_actions[0].choices) - {"clean_shm"}
    assert set(envs.values()) == {"data", "train", "summarize"}
    python = {name: env_venv(ROOT / "envs" / f"{name}.yaml", tmp_path / name) for name in set(envs.values())}
    for env, interpreter in python.items():
        subs = [sub for sub, e in envs.items() if e == env]
        packages, modules = set(), set()
        for sub in subs:
            outside, inside = imports_of(sub)
            packages |= outside
            modules |= inside
        code = "; ".join([f"import {p}" for p in sorted(packages)] +
                         [f"import mpi_ensemble.{m}" for m in sorted(modules)] +
                         (["from mpi4py import MPI"] if "mpi4py" in packages else []))
        run = subprocess.run([str(interpreter), "-c", code], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert run.returncode == 0, f"envs/{env}.yaml lacks what {', '.join(subs)} import:\n{run.stderr[-2000:]}"
    assert "pandas" not in imports_of("audit")[0] and "tensorflow" not in imports_of("summarize")[0]


def test_the_post_deploy_script_installs_the_package_and_writes_nothing_into_the_workflow(tmp_path):
    """What --sdm conda runs once in each new env: the package of a local copy, built from a copy of its own."""
    clone = tagged_clone(tmp_path / "clone")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp_path / "env")], check=True)
    env = {**os.environ, "PATH": f"{tmp_path / 'env' / 'bin'}:{os.environ['PATH']}", "MPI_ENSEMBLE_SOURCE": str(clone)}
    env.pop("VIRTUAL_ENV", None)
    run = subprocess.run(["bash", str(ROOT / "envs" / "train.post-deploy.sh")], capture_output=True, text=True,
                         timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    installed = subprocess.run([str(tmp_path / "env" / "bin" / "python"), "-m", "pip", "show", "-f", "mpi-ensemble"],
                               capture_output=True, text=True).stdout
    assert f"Version: {mpi_ensemble.__version__}" in installed and "Editable project location" not in installed
    assert git(clone, "status", "--porcelain", "--ignored") == ""


# --- one version, the catalog's usage, the citation ----------------------------------------------------------


def test_one_version_number_everywhere():
    version = mpi_ensemble.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mpi_ensemble.__version__"}
    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["version"] == version
    first = next(line for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line.startswith("## "))
    assert first.startswith(f"## {version} ")
    installed = subprocess.run([str(BIN / "python"), "-m", "pip", "show", "mpi-ensemble"], capture_output=True,
                               text=True).stdout
    assert f"Version: {version}" in installed


def test_catalog_usage_and_standard_layout():
    """What the workflow catalog's standardized usage reads, and the layout it (and snakedeploy) expect."""
    usage = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert usage["software-stack-deployment"]["conda"] is True and usage["report"] is True
    assert usage["mandatory-flags"]["flags"] and usage["mandatory-flags"]["desc"]
    assert (ROOT / "workflow" / "Snakefile").is_file() and (ROOT / "config" / "README.md").is_file()
    assert "snakedeploy deploy-workflow" in (ROOT / "README.md").read_text()


# --- the workflow as a module in the user's own folder ----------------------------------------------------


def module_project(folder, snakefile, config, prefix=""):
    """What a user writes (what snakedeploy writes): a Snakefile that uses every rule of the workflow as a module,
    its rules named `{prefix}*` when a prefix is given, a config, and the workflow's profiles copied beside them.
    `snakefile` is a path, or a source expression such as gitfile(...)."""
    (folder / "config").mkdir(parents=True)
    (folder / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    source = snakefile if "(" in str(snakefile) else f'"{snakefile}"'
    (folder / "Snakefile").write_text(
        'configfile: "config/config.yaml"\n\n\n'
        "module mpi_ensemble:\n"
        f"    snakefile:\n        {source}\n"
        "    config:\n        config\n\n\n"
        f"use rule * from mpi_ensemble{f' as {prefix}*' if prefix else ''}\n"
    )
    shutil.copytree(ROOT / "profiles", folder / "profiles")
    return folder


def git(folder, *args):
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.org", *args], cwd=folder,
                          capture_output=True, text=True, check=True).stdout


def tagged_clone(folder):
    """A clone of this project as a git repository at the tag of its version, as a git host serves it."""
    clone = project_copy(folder)
    git(clone, "init", "-q")
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "clone")
    git(clone, "tag", f"v{mpi_ensemble.__version__}")
    return clone


def files_below(folder):
    """Every file below `folder`, but Snakemake's own state (.snakemake/, which it writes even for a dry run)."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*")
                  if p.is_file() and ".snakemake" not in p.relative_to(folder).parts)


@pytest.mark.workflow
def test_module_from_git_with_a_rule_prefix_runs_everything_and_audits_clean(tmp_path):
    """The journey of a user who deploys the workflow in a folder of their own: the module read from a git
    repository at a tag (`gitfile` takes the path Snakemake takes for `github(...)`: files read from git), its rules
    renamed `mpi_*`. A dry run writes nothing; the run copies the bundled MNIST and the paper's numbers out of git
    once, trains, and audits itself clean; a second run has nothing to do (the paper's file is no per-run copy);
    the clone is left as it was. (Under SLURM, test_cluster.py runs a prefixed module: its local rules stay
    local.)"""
    clone = tagged_clone(tmp_path / "clone")
    source = f'gitfile("{clone}", path="workflow/Snakefile", tag="v{mpi_ensemble.__version__}")'
    project = module_project(tmp_path / "project", source, TINY, prefix="mpi_")
    before = files_below(project)
    plan = snakemake(project, "-n")
    assert files_below(project) == before  # the dry run wrote nothing (11.6 MB of bundled MNIST before)
    assert "mpi_unpack_bundled" in plan.stdout and "mpi_train_mpi_ranks2" in plan.stdout

    start = time.monotonic()
    snakemake(project)
    print(f"\nmodule from git, prefixed: {time.monotonic() - start:.0f} s")
    assert_audit_clean(project)
    fetched = (project / "logs" / "fetch_data.log").read_text()
    assert fetched.count("copied from resources/bundled/data/mnist, SHA-256 verified") == 4, fetched
    comparison = (project / "results" / "paper_comparison.csv").read_text()
    assert "laptop" in comparison and "22.52" in comparison  # the paper's N = 2 row, from the tagged file
    assert "Nothing to be done" in snakemake(project, "-n").stdout
    assert git(clone, "status", "--porcelain", "--ignored") == ""


def test_module_in_own_folder_reads_the_workflows_files_where_they_are(tmp_path):
    """The module from a local clone: its bundled MNIST is read from the clone's data/ (nothing copied), a dry run
    leaves the project folder as it was, and the data stage writes only into the project."""
    clone = tagged_clone(tmp_path / "clone")
    project = module_project(tmp_path / "project", clone / "workflow" / "Snakefile", TINY)
    before = files_below(project)
    plan = snakemake(project, "-n", "-p").stdout
    assert files_below(project) == before and "unpack_bundled" not in plan
    arrays = [f"results/data/mnist/{name}.npy" for name in ("train_x", "train_y", "test_x", "test_y")]
    snakemake(project, *arrays)
    fetched = (project / "logs" / "fetch_data.log").read_text()
    assert fetched.count(f"copied from {clone / 'data' / 'mnist'}, SHA-256 verified") == 4
    assert not (project / "resources" / "bundled").exists()
    assert git(clone, "status", "--porcelain", "--ignored") == ""


def test_a_dry_run_and_lint_leave_no_file_behind(tmp_path):
    """In a fresh clone, `snakemake -n` and `snakemake --lint` write nothing but Snakemake's own .snakemake/."""
    work = project_copy(tmp_path / "work")
    before = files_below(work)
    assert "Job stats:" in snakemake(work, "-n").stdout
    snakemake(work, "--lint")
    assert files_below(work) == before


def test_missing_package_is_refused_naming_the_install(tmp_path):
    """Snakemake from an environment that has every package of .venv but the project (its site-packages joined
    by a plain path, which leaves out the editable install's hook) stops before any job and says how to install
    the package."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    ours = subprocess.run([str(BIN / "python"), "-c", purelib], capture_output=True, text=True).stdout.strip()
    theirs = subprocess.run([str(venv / "bin" / "python"), "-c", purelib], capture_output=True, text=True)
    (Path(theirs.stdout.strip()) / "venv_packages.pth").write_text(ours + "\n")
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "snakemake", "-n", "--cores", "1"],
                         cwd=project_copy(tmp_path / "work"), capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "mpi_ensemble is not importable" in text and "make venv" in text, text[-3000:]


# --- under --sdm conda, the launcher is the job env's ---------------------------------------------------------

FAKE_CONDA = """#!/bin/sh
# Answers what Snakemake asks conda before a dry run; creates nothing.
case "$*" in
  "info --json") echo '{"conda_prefix": "/nonexistent", "platform": "linux-64"}' ;;
  "--version") echo "conda 25.1.1" ;;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}' ;;
  *) echo "test conda: $* is not provided" >&2; exit 1 ;;
esac
"""


def job_env(folder, marker):
    """A folder shaped like a conda env that holds this stack: bin/python (a link, with the venv's pyvenv.cfg and
    lib/ beside it, so it is that interpreter with those packages), Hydra's helpers, and bin/mpiexec, a wrapper
    that notes its use in `marker` and then runs the real one."""
    (folder / "bin").mkdir(parents=True)
    shutil.copy(BIN.parent / "pyvenv.cfg", folder / "pyvenv.cfg")
    (folder / "lib").symlink_to(BIN.parent / "lib")
    (folder / "bin" / "python").symlink_to(BIN / "python")
    for helper in BIN.glob("hydra_*"):
        (folder / "bin" / helper.name).symlink_to(helper)
    (folder / "bin" / "mpiexec").write_text(f'#!/bin/sh\necho "$0" >> {marker}\nexec {BIN / "mpiexec"} "$@"\n')
    (folder / "bin" / "mpiexec").chmod(0o755)
    return folder


def shell_command(text, rule):
    """The shell command a dry run (-p) prints for `rule`."""
    block = text[text.index(f"rule {rule}:"):]
    return re.search(r"\{ python -m mpi_ensemble clean_shm.*$", block, re.M)[0].strip()


@pytest.mark.workflow
def test_mpi_rule_under_conda_finds_the_launcher_in_the_job_env(tmp_path):
    """--sdm conda: the MPI rule's command names mpiexec without a path, and run as conda runs it (the env's bin/
    first on PATH, the Snakemake environment's bin/ nowhere on it) it starts the env's mpiexec and trains."""
    work = project_copy(tmp_path / "work")
    config = ["--config", *(f"{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY.items())]
    condabin = tmp_path / "condabin"
    condabin.mkdir()
    (condabin / "conda").write_text(FAKE_CONDA)
    (condabin / "conda").chmod(0o755)
    target = "results/models/ranks2/seed0/rank1.keras"
    out = snakemake(work, target, "-n", "-p", "--sdm", "conda", *config,
                    env={"PATH": f"{condabin}:{os.environ['PATH']}"})
    command = shell_command(out.stdout + out.stderr, "train_mpi_ranks2")
    assert " && mpiexec -n 2 -bind-to core:1 python -m mpi4py -m mpi_ensemble train_mpi " in command
    assert str(BIN) not in command

    snakemake(work, "results/data/mnist/train_x.npy", "results/data/mnist/train_y.npy", *config)  # the inputs
    for folder in ("logs/train_mpi/ranks2", "results/models/ranks2/seed0"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    marker = tmp_path / "launched"
    env_bin = job_env(tmp_path / "env", marker) / "bin"
    job = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    job.update(PATH=f"{env_bin}:/usr/bin:/bin", TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run(["bash", "-c", command], cwd=work, env=job, capture_output=True, text=True, timeout=600)
    log = (work / "logs" / "train_mpi" / "ranks2" / "seed0.log").read_text()
    assert run.returncode == 0, log[-3000:]
    assert marker.read_text().split() == [str(env_bin / "mpiexec")]
    for rank in range(2):
        record = json.loads((work / f"results/models/ranks2/seed0/rank{rank}.json").read_text())
        assert record["ranks"] == 2 and record["rank"] == rank and record["mpi_library"].startswith("MPICH")
        assert (work / f"results/models/ranks2/seed0/rank{rank}.keras").stat().st_size > 100_000


# --- prerequisites the Makefile checks ----------------------------------------------------------------------


def test_make_refuses_a_python_older_than_3_11(tmp_path):
    """`make venv` with a Python 3.10 (a stand-in that answers as one) stops before creating anything, saying
    what it found and that PYTHON= chooses another."""
    old = tmp_path / "python3.10"
    old.write_text('#!/bin/sh\ncase "$2" in *exit*) exit 1 ;; *) echo 3.10.12 ;; esac\n')
    old.chmod(0o755)
    out = subprocess.run(["make", "-C", str(ROOT), "venv", f"PYTHON={old}", f"VENV={tmp_path / 'venv'}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and not (tmp_path / "venv").exists()
    assert "Python >= 3.11 is needed" in out.stderr and "is 3.10.12" in out.stderr and "PYTHON=" in out.stderr
