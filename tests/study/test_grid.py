"""A study spread over tasks (kdjax/study/grid.py): tasks K/N in parallel processes on one machine, the merge,
killed and doubled tasks. The merged report equals the one-process run's (timings, environment and the task
fields aside); every process computes on one core (task_cores=1), the reference too: XLA:CPU's sums depend on
its thread count, so that is where "the same bits" holds."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from kdjax import phases
from kdjax.config import defaults as config_lib
from kdjax.config import lookup
from kdjax.config import validation
from kdjax.errors import ConfigError
from kdjax.study import grid
from tests.support import ckpt as support

STUDY = ["--config", str(support.REPO / "configs/kd.py"), "--config.num_seeds=3", "--config.epochs=2",
         "--config.log_every_epoch=False", "--config.task_cores=1",
         *[arg for arg in support.TINY if not arg.startswith("--config.epochs")]]
SWEEP = ["--config", str(support.REPO / "configs/kd.py"), "--config.phases=('teacher','student_kd')",
         "--config.ema.sweep=(0.9,0.99)", "--config.num_seeds=2", "--config.epochs=2",
         "--config.log_every_epoch=False", "--config.task_cores=1",
         *[arg for arg in support.TINY if not arg.startswith("--config.epochs")]]

# kdjax.main, blocked (waiting to be killed) when about to save student_kd's epoch 2 of seed 2.
BLOCK_BEFORE_SAVE = support.hold_before_save(
    'self.directory.name == "student_kd" and self.directory.parent.parent.name == "seed_2" and epoch == 2')


def comparable(report: dict) -> dict:
  """report.json less timings (the EMA diagnostics' compile_seconds too: once a process), the environment (host,
  threads), the grid's records and the task fields."""
  report = {key: value for key, value in report.items() if key not in ("environment", "grid")}
  report["config"] = {key: value for key, value in report["config"].items() if key not in ("task", "task_cores")}
  return _without(support.without_timing(report), "compile_seconds")


def _without(value, key: str):
  if isinstance(value, dict):
    return {name: _without(item, key) for name, item in value.items() if name != key}
  if isinstance(value, list):
    return [_without(item, key) for item in value]
  return value


def markdown_without_timing(workdir) -> str:
  """report.md less its last table column (train seconds) and what the EMA diagnostics took (collapse.py)."""
  text = re.sub(r"\| [0-9.,]+ \|$", "|", (pathlib.Path(workdir) / "report.md").read_text(), flags=re.M)
  return re.sub(r"they took [^\n]*", "they took (time)", text)


def start_tasks(args, workdir, count, cache):
  return [subprocess.Popen([sys.executable, "-m", "kdjax.main", *args, f"--config.task={index}/{count}",
                            f"--workdir={workdir}"], cwd=support.REPO, env=support.env(cache),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for index in range(count)]


def finish(processes) -> list[str]:
  outputs = [process.communicate(timeout=900)[0] for process in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  return outputs


def assert_same_study(merged, reference, seeds):
  assert comparable(support.read_report(merged)) == comparable(support.read_report(reference))
  assert markdown_without_timing(merged) == markdown_without_timing(reference)
  for seed in seeds:
    assert comparable(support.read_report(merged / f"seed_{seed}")) == comparable(
        support.read_report(reference / f"seed_{seed}"))
    assert support.without_timing(support.read_metrics(merged / f"seed_{seed}")) == support.without_timing(
        support.read_metrics(reference / f"seed_{seed}"))


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
  """The 3-seed study in one process, and as 3 tasks in 3 processes at once."""
  base = tmp_path_factory.mktemp("grid")
  cache = support.compile_cache(tmp_path_factory)
  result = support.kdjax(STUDY, base / "one", cache_dir=cache, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  outputs = finish(start_tasks(STUDY, base / "grid", 3, cache))
  return base, outputs, cache


@pytest.mark.slow
def test_three_tasks_merge_into_the_one_process_report(three_seeds):
  base, outputs, _ = three_seeds
  assert_same_study(base / "grid", base / "one", (0, 1, 2))
  assert sum("merge: every unit finished (3)" in output for output in outputs) == 1, outputs
  units = support.read_report(base / "grid")["grid"]["units"]
  assert [(unit["unit"], unit["task"]) for unit in units] == [("seed_0/main", "0/3"), ("seed_1/main", "1/3"),
                                                               ("seed_2/main", "2/3")]
  assert all(len(unit["cores"]) == 1 and unit["xla_threads"] == 1 for unit in units), units


@pytest.mark.slow
def test_a_killed_task_resumes_and_a_merge_before_the_end_names_what_is_missing(three_seeds, tmp_path):
  base, _, cache = three_seeds
  workdir = tmp_path / "grid"
  shutil.copytree(base / "grid", workdir)
  (workdir / "seed_2" / "units" / "main" / grid.DONE).unlink()   # seed 2's unit back to student_kd's epoch 1
  shutil.rmtree(workdir / "seed_2" / "checkpoints" / "student_kd" / "2")
  (workdir / "report.json").unlink()
  task = support.script(BLOCK_BEFORE_SAVE, [*STUDY, "--config.task=2/3", f"--workdir={workdir}"], cache_dir=cache)
  lines = support.wait_for_line(task, support.WAITING)
  support.sigkill(task)
  assert any("[student_kd] resuming after epoch 1" in line for line in lines), lines

  merge = support.kdjax([*STUDY, "--config.task=merge"], workdir, cache_dir=cache)
  assert merge.returncode == 1
  assert merge.stderr.strip().splitlines()[-1] == (
      f"kdjax: error: cannot merge {workdir}: 1 of 3 units not finished (seed_2/main); run their tasks "
      f"(--config.task=K/N), then merge")
  assert not (workdir / "report.json").exists()

  rerun = support.kdjax([*STUDY, "--config.task=2/3"], workdir, cache_dir=cache)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "[teacher] finished earlier" in rerun.stdout and "[student_kd] resuming after epoch 1" in rerun.stdout
  assert_same_study(workdir, base / "one", (0, 1, 2))


@pytest.mark.slow
def test_a_held_unit_is_skipped_and_an_idle_task_exits_0(three_seeds, tmp_path):
  base, _, cache = three_seeds
  workdir = tmp_path / "grid"
  shutil.copytree(base / "grid", workdir)
  (workdir / "seed_1" / "units" / "main" / grid.DONE).unlink()
  stamp = (workdir / "report.json").stat().st_mtime_ns
  lock = workdir / "seed_1" / "units" / "main" / ".lock"
  holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; d = os.open(sys.argv[1], os.O_RDONLY"
                             " | os.O_CREAT); fcntl.flock(d, fcntl.LOCK_EX); print('held', flush=True); "
                             "time.sleep(600)", str(lock)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    second = support.kdjax([*STUDY, "--config.task=1/3"], workdir, cache_dir=cache)
  finally:
    holder.kill()
    holder.wait()
  assert second.returncode == 0, second.stderr[-3000:]
  assert "unit seed_1/main: being run by another task" in second.stdout
  assert "merge: 1 of 3 units not finished yet (seed_1/main)" in second.stdout
  assert (workdir / "report.json").stat().st_mtime_ns == stamp   # no report of 2 seeds

  idle = support.kdjax([*STUDY, "--config.task=4/5"], workdir, cache_dir=cache)
  assert idle.returncode == 0 and "task 4 of 5: no units (the study has 3" in idle.stdout, idle.stdout


@pytest.mark.slow
def test_two_tasks_given_the_same_index_run_each_unit_once(tmp_path, tmp_path_factory):
  args = ["--config", str(support.REPO / "configs/kd.py"), "--config.phases=('teacher',)", "--config.epochs=1",
          "--config.task_cores=1", *[arg for arg in support.TINY if not arg.startswith("--config.epochs")]]
  cache = support.compile_cache(tmp_path_factory)
  same = [subprocess.Popen([sys.executable, "-m", "kdjax.main", *args, "--config.task=0/1",
                            f"--workdir={tmp_path / 'w'}"], cwd=support.REPO, env=support.env(cache),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
  outputs = finish(same)
  assert sum(output.count("== unit main") for output in outputs) == 1, outputs
  assert any("unit main: being run by another task" in output or "unit main: finished" in output
             for output in outputs), outputs
  assert (tmp_path / "w" / "report.json").exists()


@pytest.mark.slow
def test_a_sweep_over_tasks_equals_the_one_process_sweep(tmp_path, tmp_path_factory):
  cache = support.compile_cache(tmp_path_factory)
  result = support.kdjax(SWEEP, tmp_path / "one", cache_dir=cache, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  finish(start_tasks(SWEEP, tmp_path / "grid", 3, cache))
  assert_same_study(tmp_path / "grid", tmp_path / "one", (0, 1))
  units = support.read_report(tmp_path / "grid")["grid"]["units"]
  assert [unit["unit"] for unit in units] == [f"seed_{seed}/{point}" for point in
                                              ("main", "student_kd_ema@0.9", "student_kd_ema@0.99") for seed in (0, 1)]
  for unit in units:   # each seed's teacher trained once, by its main unit; the sweep points load it
    assert ("teacher" in unit["loaded"]) == (unit["point"] != "main"), unit


# -- the task selector and the units, without running anything --

def config_of(**fields):
  config = config_lib.default_config()
  for dotted, value in fields.items():
    lookup.override(config, dotted, value)   # the command line's setter (a field that does not exist: ConfigError)
  return config


def test_units_are_point_major_with_the_mains_first_and_assigned_round_robin(tmp_path):
  config = config_of(phases=phases.PHASE_NAMES, num_seeds=2, seed=5, **{"ema.sweep": (0.9, 0.999)})
  found = grid.units(config, tmp_path)
  assert [(unit.seed, unit.point) for unit in found] == [(5, "main"), (6, "main"), (5, "student_kd_ema@0.9"),
                                                          (6, "student_kd_ema@0.9")]   # 0.999 is student_kd_ema
  assert found[2].only == ("teacher", "student_kd_ema@0.9") and found[0].trains == phases.PHASE_NAMES
  assert found[3].directory == tmp_path / "seed_6" / "units" / "student_kd_ema@0.9"
  assert [unit.index % 3 for unit in found] == [0, 1, 2, 0]
  one = grid.units(config_of(num_seeds=1), tmp_path)
  assert [unit.name for unit in one] == ["main"] and one[0].folder == tmp_path


def test_the_task_from_the_launchers_environment():
  auto = config_of(task="auto")
  assert grid.task_of(config_of(task="2/5")) == (2, 5)
  assert grid.task_of(auto, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1",
                             "SLURM_ARRAY_TASK_COUNT": "4"}) == (2, 4)
  assert grid.task_of(auto, {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_STEP": "2",
                             "SLURM_ARRAY_TASK_COUNT": "3"}) == (2, 3)
  assert grid.task_of(auto, {"JOB_COMPLETION_INDEX": "1", grid.COUNT_ENV: "3"}) == (1, 3)
  with pytest.raises(ConfigError, match="JOB_COMPLETION_INDEX is set but KDJAX_TASK_COUNT is not"):
    grid.task_of(auto, {"JOB_COMPLETION_INDEX": "1"})
  with pytest.raises(ConfigError, match="neither SLURM_ARRAY_TASK_ID"):
    grid.task_of(auto, {})
  with pytest.raises(ConfigError, match=r"task auto: task 3 of 3 is not in \[0, 2\]"):
    grid.task_of(auto, {"JOB_COMPLETION_INDEX": "3", grid.COUNT_ENV: "3"})


@pytest.mark.parametrize("fields, message", [
    ({"task": "3/3"}, "task must be '' (every unit here), 'K/N' (task K of N, 0 <= K < N), 'auto' or 'merge', "
                      "got '3/3'"),
    ({"task": "1 of 2"}, "task must be ''"),
    ({"task": "0/2", "distributed.coordinator_address": "auto"}, "task runs a share of the study's units"),
    ({"task_cores": -1}, "task_cores must be an integer >= 0 (0 = as launched), got -1"),
])
def test_bad_task_fields_are_one_line_naming_the_field(fields, message):
  with pytest.raises(ConfigError) as error:
    validation.validate(config_of(**fields))
  assert str(error.value).startswith(message)


def test_task_cores_pins_the_process_before_jax_starts():
  """In a fresh process: task 1 of 2 with one core takes the second core it may use; XLA's pool then has one
  thread, oneDNN's team one."""
  if len(os.sched_getaffinity(0)) < 2:
    pytest.skip("one core: nothing to share")
  code = ("import os, jax.numpy as jnp; from kdjax.config import defaults; from kdjax.study import grid\n"
          "c = defaults.default_config(); c.task = '1/2'; c.task_cores = 1\n"
          "allowed = sorted(os.sched_getaffinity(0)); print(grid.share_cores(c, {}) == [allowed[1]])\n"
          "(jnp.ones((256, 256)) @ jnp.ones((256, 256))).block_until_ready()\n"
          "used = grid.threads_used(); print(len(used['cores']), used['xla_threads'], os.environ['KDJAX_ONEDNN_THREADS'])")
  result = subprocess.run([sys.executable, "-c", code], cwd=support.REPO, env=support.env(), capture_output=True,
                          text=True, timeout=120)
  assert result.stdout.split() == ["True", "1", "1", "1"], result.stdout + result.stderr[-2000:]


def test_the_main_unit_distils_from_a_given_teacher_as_the_one_process_run_does(tmp_path, tmp_path_factory):
  """teacher.checkpoint with tasks: the main unit trains no teacher, yet its KD phases distil from the given one
  (not from the stand-in initial teacher that a phase's fresh state holds until the teacher is set)."""
  fields = {"phases": ("student_kd",), "teacher.checkpoint": str(support.finished_run(tmp_path_factory))}
  support.run_in_process(support.study_config(**fields), tmp_path / "one")
  support.run_in_process(support.study_config(task="0/1", **fields), tmp_path / "grid")
  assert comparable(support.read_report(tmp_path / "grid")) == comparable(support.read_report(tmp_path / "one"))
