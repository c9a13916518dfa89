"""The kernel settings chosen from the CPU's flags: which kind a CPU is, what each kind gets, who wins over whom,
what the records keep, and that a real training process has them in force before TensorFlow starts."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from mpi_ensemble import records, runtime, startup

# /proc/cpuinfo flags (vector part) of the CPU kinds users have.
ZEN3 = {"fpu", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}
ZEN4 = ZEN3 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"}
SKYLAKE_X = ZEN3 | {"avx512f", "avx512bw", "avx512vl"}  # AVX-512 without VNNI: TensorFlow leaves oneDNN off
SAPPHIRE_RAPIDS = SKYLAKE_X | {"avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "avx_vnni"}
SANDY_BRIDGE = {"fpu", "sse4_1", "sse4_2", "avx"}
AVX2_WITHOUT_FMA = {"sse4_2", "avx", "avx2"}  # no real CPU, but the flags alone must decide


@pytest.mark.parametrize("flags, kind", [(ZEN3, "avx2"), (ZEN4, "avx512"), (SKYLAKE_X, "avx512"),
                                         (SAPPHIRE_RAPIDS, "avx512"), (SANDY_BRIDGE, "other"),
                                         (AVX2_WITHOUT_FMA, "other"), (set(), "other")])
def test_cpu_kind_from_flags(flags, kind):
    assert runtime.cpu_kind(flags) == kind


@pytest.mark.parametrize("flags", [ZEN3, ZEN4, SKYLAKE_X, SAPPHIRE_RAPIDS])
def test_auto_turns_onednn_on_for_every_avx2_and_avx512_cpu(flags):
    assert runtime.cpu_settings(flags, "auto")["TF_ENABLE_ONEDNN_OPTS"] == "1"


def test_cpus_without_avx2_and_the_tensorflow_choice_keep_tensorflows_defaults():
    assert runtime.cpu_settings(SANDY_BRIDGE, "auto") == {}
    for flags in (ZEN3, SAPPHIRE_RAPIDS, SANDY_BRIDGE):
        assert runtime.cpu_settings(flags, "tensorflow") == {}


def test_unknown_tuning_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="cpu_tuning must be one of auto, tensorflow, not 'fast'"):
        runtime.cpu_settings(ZEN3, "fast")


def test_apply_fills_only_what_the_user_left_unset_and_records_it():
    environ = {"TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_MAX_CPU_ISA": "AVX2", "HOME": "/root"}
    assert runtime.apply_cpu_settings("auto", ZEN3, environ) == {}  # the user's 0 wins
    assert environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    recorded = startup.kernel_settings(ZEN3, environ)
    assert {k: recorded[k] for k in ("cpu_kind", "cpu_tuning", "env")} == {
        "cpu_kind": "avx2", "cpu_tuning": "auto",
        "env": {"TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_MAX_CPU_ISA": "AVX2", runtime.CPU_TUNING_ENV: "auto"},
    }
    environ = {}
    assert runtime.apply_cpu_settings("auto", ZEN3, environ) == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "1", runtime.CPU_TUNING_ENV: "auto"}


def test_apply_reads_the_tuning_from_the_environment_the_cli_sets():
    environ = {runtime.CPU_TUNING_ENV: "tensorflow"}
    assert runtime.apply_cpu_settings(None, ZEN3, environ) == {}
    assert startup.kernel_settings(ZEN3, environ)["cpu_tuning"] == "tensorflow"
    environ = {}
    assert runtime.apply_cpu_settings(None, ZEN3, environ) == {"TF_ENABLE_ONEDNN_OPTS": "1"}  # default: auto


def test_rank_record_carries_the_kernel_settings(monkeypatch):
    monkeypatch.setenv(runtime.CPU_TUNING_ENV, "tensorflow")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    settings = {"epochs": 1, "batch_size": 8, "validation_split": 0.2, "precision": "float32"}
    record = records.rank_record("sequential", 0, 1, 0, settings, 1, 2, 0.0, {})
    assert record["kernel_settings"]["cpu_tuning"] == "tensorflow"
    assert record["kernel_settings"]["env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert record["kernel_settings"]["cpu_kind"] == runtime.cpu_kind(runtime.cpu_flags())


def tensorflow_process(**env):
    """A fresh process that imports Keras through the project's runtime; its kernel settings and TensorFlow's log."""
    code = ("import json; from mpi_ensemble import startup; startup.import_keras(1); "
            "print(json.dumps(startup.kernel_settings()))")
    base = {k: v for k, v in os.environ.items() if k not in runtime.KERNEL_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**base, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "0", **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1]), out.stderr


def test_tensorflow_starts_with_the_chosen_settings_or_the_users():
    chosen, log = tensorflow_process(**{runtime.CPU_TUNING_ENV: "auto"})
    expected = runtime.cpu_settings(runtime.cpu_flags(), "auto")
    assert {k: chosen["env"][k] for k in expected} == expected
    if expected.get("TF_ENABLE_ONEDNN_OPTS") == "1":
        assert "oneDNN custom operations are on" in log and chosen["onednn"] is True
    theirs, log = tensorflow_process(TF_ENABLE_ONEDNN_OPTS="0")
    assert theirs["env"]["TF_ENABLE_ONEDNN_OPTS"] == "0" and theirs["cpu_tuning"] == "auto"
    assert "oneDNN custom operations are on" not in log and theirs["onednn"] is False


def test_the_training_commands_hand_their_cpu_tuning_to_the_runtime(monkeypatch):
    from mpi_ensemble import cli

    monkeypatch.delenv(runtime.CPU_TUNING_ENV, raising=False)
    base = ["train_mpi", "--train-x", "x.npy", "--train-y", "y.npy", "--job-cores", "2", "--seed", "0",
            "--epochs", "1", "--batch-size", "8", "--validation-split", "0.2", "--out-dir", "out"]
    args = cli.build_parser().parse_args(base)
    assert args.cpu_tuning == "auto"  # the default when the workflow passes nothing
    cli.use_cpu_tuning(cli.build_parser().parse_args([*base, "--cpu-tuning", "tensorflow"]))
    assert os.environ[runtime.CPU_TUNING_ENV] == "tensorflow"
    with pytest.raises(SystemExit):  # argparse names the choices
        cli.build_parser().parse_args([*base, "--cpu-tuning", "off"])
