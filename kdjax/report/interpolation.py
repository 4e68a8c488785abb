"""The interpolation's table and figure (study/interpolation.py computes them): the trained teacher's top-1 against w,
the student's share of its EMA-paired tensors, one line per student source, and the original's EMA at its
collapse-diagnostic points, at the share w = 1 − α^k it had reached there.

  markdown(result) -> interpolation.md's text       plot(result, path) -> interpolation.png (figures.save)

A change of top-1 between two grid points is stated as a bracket ("between w = a and w = b"), never as a point.
"""

from kdjax.report import figures
from kdjax.report import significance

SOURCE_NAMES = {"student_kd": "student_kd (KD from the frozen teacher)", "student_ce": "student_ce (labels only)",
                "initial": "initial student (the seed's initial weights)"}
DYNAMIC = "teacher_ema"   # the original's EMA-updated teacher, as its report row is called
TICKS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)   # the x axis's labels (symmetric-log: more would overlap)


def _percent(value) -> str:
  return "–" if value is None else f"{value:.2f}"


def halving(weights, top1) -> str:
  """Where `top1` (at ascending `weights`, top1[0] the teacher's own at w = 0 when weights[0] == 0) first falls to
  half its first value: "between w = a and w = b", "never (last: x % at w = c)"."""
  start = top1[0]
  for index in range(1, len(top1)):
    if top1[index] <= start / 2:
      return f"between w = {weights[index - 1]:g} and w = {weights[index]:g}"
  return f"never on the grid (last: {top1[-1]:.2f} % at w = {weights[-1]:g})"


def dynamic_halving(points) -> str | None:
  """The original's EMA, a sentence: between which two diagnostic points (steps, and their w) the EMA-updated
  teacher's top-1 on the probe first falls to half its value at the start (or that it never does); None without
  two points."""
  series = [(p["step"], p["w"], p["probe_top1"] if p.get("probe_top1") is not None else p.get("top1"))
            for p in points]
  series = [entry for entry in series if entry[2] is not None]
  if len(series) < 2:
    return None
  start = series[0][2]
  for index in range(1, len(series)):
    if series[index][2] <= start / 2:
      (step_a, w_a, _), (step_b, w_b, _) = series[index - 1], series[index]
      return (f"{DYNAMIC} lost half its top-1 on the probe between step {step_a} (w = {w_a:.3f}) and step {step_b} "
              f"(w = {w_b:.3f}), from {start:.2f} % at the start.")
  return (f"{DYNAMIC}'s top-1 on the probe never fell to half its start ({start:.2f} %; last: {series[-1][2]:.2f} % "
          f"at step {series[-1][0]}, w = {series[-1][1]:.3f}).")


def _pairs_sentence(pairs) -> str:
  moved = ", ".join(f"{teacher} ← {student}" if teacher != student else teacher for student, teacher in pairs)
  return f"the {len(pairs)} teacher tensors the original's EMA pairs with the student's (teacher ← student): {moved}"


def seed_lines(seed: dict, weights, sources) -> list[str]:
  data = seed["data"]
  lines = [f"| w | {' | '.join(sources)} |", "|---:|" + "---:|" * len(sources)]
  for index, weight in enumerate(weights):
    lines.append(f"| {weight:g} | " + " | ".join(_percent(seed["top1"][source][index]) for source in sources) + " |")
  lines.append("")
  reported = seed.get("teacher_top1_report")
  if weights[0] == 0 and reported is not None:
    own = seed["top1"][sources[0]][0]
    verdict = "equal to" if own == reported else "DIFFERENT from"
    lines.append(f"At w = 0 every source gives the trained teacher: {own:.2f} %, {verdict} report.json's teacher "
                 f"({reported:.2f} %).")
  if weights[0] == 0:
    lines.append("Half the teacher's top-1 first lost: " + "; ".join(
        f"{source} {halving(weights, seed['top1'][source])}" for source in sources) + ".")
  dynamic = seed["ema"]
  if dynamic["points"]:
    probe = next((p["probe_size"] for p in dynamic["points"] if p.get("probe_size")), None)
    rule = ("1 − Π min(1 − 1/(t + 1), α)" if dynamic["warmup"] else "1 − α^k")
    lines += ["", f"The original's EMA in this run's kd_ema phase (α = {dynamic['decay']:g}"
                  f"{', with warm-up' if dynamic['warmup'] else ''}): after k updates its paired tensors hold a "
                  f"share w = {rule} of the student's weights (of the student's whole trajectory, not of one "
                  f"student); {DYNAMIC}'s top-1 there:", "",
              f"| step k | epoch | w | top-1 on the {probe or '?'}-image probe % | on the whole validation split % "
              f"| moved (of its norm) |", "|---:|---:|---:|---:|---:|---:|"]
    for point in dynamic["points"]:
      moved = "–" if point.get("distance") is None else f"{point['distance']:.1%}"
      lines.append(f"| {point['step']} | {point['epoch']} | {point['w']:.4f} | {_percent(point['probe_top1'])} "
                   f"| {_percent(point['top1'])} | {moved} |")
    where = dynamic_halving(dynamic["points"])
    if where:
      lines += ["", where]
  elif dynamic.get("missing"):
    lines += ["", f"No dynamic EMA to set beside it: {dynamic['missing']}."]
  chance = 100.0 / data["num_classes"]
  lines += ["", f"Chance: {chance:.2f} % ({data['num_classes']} classes, {data['val_examples']} validation images; one "
                f"image is {100.0 / data['val_examples']:.2f} points)."]
  return lines


def mean_lines(result: dict) -> list[str]:
  """Over several seeds: mean ± std of each source's top-1 at each w."""
  weights, sources, seeds = result["weights"], result["sources"], result["seeds"]
  lines = [f"| w | {' | '.join(sources)} |", "|---:|" + "---:|" * len(sources)]
  for index, weight in enumerate(weights):
    cells = []
    for source in sources:
      values = [seed["top1"][source][index] for seed in seeds]
      cells.append(f"{significance.mean(values):.2f} ± {significance.std(values):.2f}")
    lines.append(f"| {weight:g} | " + " | ".join(cells) + " |")
  return lines


def markdown(result: dict) -> str:
  weights, sources, seeds = result["weights"], result["sources"], result["seeds"]
  first = seeds[0]
  lines = ["# The trained teacher with its EMA-paired tensors mixed with a student (no training)", "",
           f"Workdir `{result['workdir']}`, {len(seeds)} seed{'s' if len(seeds) != 1 else ''}, data "
           f"{first['data']['name']}. At each w, {_pairs_sentence(first['pairs'])} are set to (1 − w)·teacher + "
           f"w·student; every other tensor stays the trained teacher's. Top-1 % on the whole validation split. "
           f"Students: " + "; ".join(SOURCE_NAMES.get(source, source) for source in sources) + ".",
           "", f"Evaluated in {result['seconds']:.0f} s (load average {result['load_average']['start']:.1f} at the "
           f"start, {result['load_average']['end']:.1f} at the end). Figure: interpolation.png."]
  for seed in seeds:
    lines += ["", f"## Seed {seed['seed']}", "", *seed_lines(seed, weights, sources)]
  if len(seeds) > 1:
    lines += ["", f"## Over the {len(seeds)} seeds (mean ± std)", "", *mean_lines(result)]
  return "\n".join(lines) + "\n"


def plot(result: dict, path, suptitle: str | None = None) -> None:
  """interpolation.png: one panel per seed, top-1 against w (symmetric-log axis, linear below 0.02) for each
  student source (report colours), the original's EMA-updated teacher at its diagnostic points (w = 1 − α^k; probe
  top-1 as crosses, the whole validation split at epoch ends as open circles), half the teacher's top-1 and chance
  as dotted lines."""
  seeds, weights = result["seeds"], result["weights"]
  figure = figures.new(figsize=(max(8.0, 5.2 * len(seeds)), 5.6))
  axes = figure.subplots(1, len(seeds), squeeze=False)[0]
  for axis, seed in zip(axes, seeds):
    for source in result["sources"]:
      axis.plot(weights, seed["top1"][source], marker="o", color=figures.color(source),
                label=f"mixed with {source}")
    points = seed["ema"]["points"]
    probe = [(p["w"], p["probe_top1"]) for p in points if p.get("probe_top1") is not None]
    if probe:
      axis.plot(*zip(*probe), linestyle="none", marker="x", color=figures.color(DYNAMIC),
                label=f"{DYNAMIC} (the original's EMA) at w = 1 − α^k, probe")
    whole = [(p["w"], p["top1"]) for p in points if p.get("top1") is not None]
    if whole:
      axis.plot(*zip(*whole), linestyle="none", marker="o", fillstyle="none", color=figures.color(DYNAMIC),
                label=f"{DYNAMIC} at epoch ends, whole split")
    if weights[0] == 0:
      own = seed["top1"][result["sources"][0]][0]
      axis.axhline(own / 2, color="0.4", linestyle=":", linewidth=1, label="half the teacher's top-1")
    axis.axhline(100.0 / seed["data"]["num_classes"], color="0.7", linestyle=":", linewidth=1, label="chance")
    axis.set_xscale("symlog", linthresh=0.02, linscale=0.5)
    ticks = [tick for tick in TICKS if min(weights) <= tick <= max(weights)] or sorted(set(weights))
    axis.set_xticks(ticks, [f"{tick:g}" for tick in ticks], fontsize=7)
    axis.set_xticks([], minor=True)
    axis.set_xlim(-0.002, 1.05)
    axis.set(title=f"seed {seed['seed']}", xlabel="w: the student's share of the paired tensors",
             ylabel="teacher top-1 %")
    axis.grid(alpha=0.3)
  figures.finish(figure, list(axes), suptitle or _title(result), legend_columns=2)
  figures.save(figure, path)


def _title(result: dict) -> str:
  data = result["seeds"][0]["data"]
  return (f"{data['name']} ({data['val_examples']} validation images): the trained teacher with its EMA-paired "
          f"tensors\nat (1 − w)·teacher + w·student, nothing trained")
