"""report.json's environment names what decides the bits (CPU class, instruction-set caps, threads, float64), and
`kdjax.cli.inspection A --compare B` says which numbers and which of those fields differ between two runs."""

import json
import os
import subprocess
import sys

import pytest

from kdjax.cli import inspection
from kdjax.nets import onednn_conv
from kdjax.report import compare
from kdjax.report import environment


def test_isa_class_takes_the_highest_kernel_class():
  assert environment.isa_class({"sse4_2", "avx", "avx2", "fma"}) == "avx2"
  assert environment.isa_class({"avx2", "avx512f", "avx512bw"}) == "avx512"
  assert environment.isa_class({"avx"}) == "avx"
  assert environment.isa_class({"sse4_2"}) == "sse"


def test_cpu_record_matches_proc_cpuinfo():
  if not os.path.exists("/proc/cpuinfo"):
    pytest.skip("no /proc/cpuinfo")
  flags = set(environment._cpuinfo().get("flags", "").split())
  cpu = environment.cpu()
  assert cpu["isa_class"] == environment.isa_class(flags)
  assert set(cpu["isa_flags"]) == flags & set(environment.ISA_FLAGS)
  assert cpu["cores_usable"] == len(os.sched_getaffinity(0))


_PROBE = ("import json; from kdjax.report import environment; "
          "print(json.dumps(environment.environment(1, 8, (16, 16, 3))))")


def _environment_in_child(**variables) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", **variables)
  done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not onednn_conv.available(), reason=onednn_conv.unavailable_reason() or "no oneDNN")
def test_capped_instruction_sets_are_recorded_as_the_kernels_ran():
  # ONEDNN_MAX_CPU_ISA=AVX below every x86-64 CPU this project meets (AVX2 or AVX-512): oneDNN's effective ISA and
  # its kernels' names say avx, not the CPU's own class; XLA's cap and float64 mode are recorded with it.
  capped = _environment_in_child(ONEDNN_MAX_CPU_ISA="AVX", XLA_FLAGS="--xla_cpu_max_isa=AVX", JAX_ENABLE_X64="1")
  assert capped["onednn"]["effective_isa"] == "avx"
  assert capped["onednn"]["threads_from"] and capped["onednn"]["wait_policy"]   # threads and OpenMP's waiting
  assert not any("avx2" in name or "avx512" in name for name in capped["onednn"]["kernels"].values())
  assert capped["xla"]["max_isa"] == "AVX" and capped["xla"]["x64"] is True
  assert capped["variables"] == {"ONEDNN_MAX_CPU_ISA": "AVX", "XLA_FLAGS": "--xla_cpu_max_isa=AVX",
                                 "JAX_ENABLE_X64": "1"}
  plain = environment.environment(1, 8, (16, 16, 3))
  isa = plain["onednn"]["effective_isa"]
  assert isa.startswith({"avx512": "avx512", "avx2": "avx2"}.get(plain["cpu"]["isa_class"], isa))
  assert plain["xla"]["max_isa"] == (environment.xla_max_isa() or "host (no cap)")


def _report(top1: float, isa: str, temperature: float = 4.0) -> dict:
  return {"models": {"teacher": {"val_top1": 96.94, "val_loss": 0.1, "train_seconds": 40.0},
                     "student_kd": {"val_top1": top1, "val_loss": 0.2, "train_seconds": 9.0,
                                    "epochs": [{"epoch": 1, "val_top1": top1, "seconds": 1.0}]}},
          "comparisons": [{"a": "student_kd", "b": "teacher", "difference": top1 - 96.94, "verdict": "noise"}],
          "config": {"kd": {"temperature": temperature}},
          "environment": {"cpu": {"model": "AMD EPYC", "isa_class": isa}, "devices": ["cpu:0"]},
          "wall_seconds": 50.0}


def test_compare_names_numbers_and_environment_that_differ_and_ignores_timings():
  result = compare.compare(_report(95.56, "avx512"), _report(95.83, "avx2"))
  paths = {entry["path"]: entry for entry in result["numbers"]}
  assert set(paths) == {"models.student_kd.val_top1", "models.student_kd.epochs.0.val_top1",
                        "comparisons.0.difference"}
  assert paths["models.student_kd.val_top1"]["difference"] == pytest.approx(0.27)
  assert [entry["path"] for entry in result["environment"]] == ["environment.cpu.isa_class"]
  assert result["config"] == []
  text = compare.format_comparison(result, "A", "B")
  assert "models.student_kd.val_top1: 95.56 -> 95.83  (+0.27)" in text
  assert "environment.cpu.isa_class: avx512 -> avx2" in text and "config: the same" in text
  same = compare.compare(_report(95.56, "avx2"), _report(95.56, "avx2"))
  assert same["numbers"] == [] and same["environment"] == []
  assert "numbers: all" in compare.format_comparison(same, "A", "B")


def test_inspection_compare_prints_the_differences_and_refuses_a_missing_report(tmp_path, capsys):
  for name, top1, temperature in (("a", 95.56, 4.0), ("b", 95.28, 2.0)):
    (tmp_path / name).mkdir()
    (tmp_path / name / "report.json").write_text(json.dumps(_report(top1, "avx2", temperature)))
  assert inspection.main([str(tmp_path / "a"), "--compare", str(tmp_path / "b")]) == 0
  out = capsys.readouterr().out
  assert "models.student_kd.val_top1: 95.56 -> 95.28" in out and "config.kd.temperature: 4 -> 2" in out
  assert "environment: the same" in out
  (tmp_path / "c").mkdir()
  assert inspection.main([str(tmp_path / "a"), "--compare", str(tmp_path / "c")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "report.json" in err and str(tmp_path / "c") in err
