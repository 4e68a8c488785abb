"""Two runs' reports side by side: which numbers differ, by how much, and which environment fields differ.

Two report.json contents (a one-seed or a several-seed report each) are flattened to dotted paths
(`models.teacher.val_top1`, `comparisons.0.p_value`, `environment.cpu.isa_class`); timings (seconds, images/s,
wall time) are left out, as they differ between any two runs. Used by `kdjax.cli.inspection A --compare B`.
"""

import math

SECTIONS = ("models", "comparisons")           # the numbers a run produced
TIMING_WORDS = ("seconds", "per_second", "wall")


def flatten(value, prefix: str = "") -> dict:
  """{dotted path: leaf} of nested dicts and lists (list items by index; a list of names keeps its items)."""
  if isinstance(value, dict):
    items = value.items()
  elif isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
    items = enumerate(value)
  else:
    return {prefix: value}
  flat = {}
  for key, item in items:
    flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
  return flat


def _is_timing(path: str) -> bool:
  return any(word in path.rsplit(".", 1)[-1] for word in TIMING_WORDS)


def _same(a, b) -> bool:
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  return a == b


def differences(a: dict, b: dict, sections=SECTIONS) -> list[dict]:
  """[{path, a, b, difference (b - a, for two numbers)}] of the leaves under `sections` that differ."""
  flat_a = {path: value for section in sections for path, value in flatten(a.get(section, {}), section).items()}
  flat_b = {path: value for section in sections for path, value in flatten(b.get(section, {}), section).items()}
  found = []
  for path in sorted(set(flat_a) | set(flat_b), key=lambda p: (p.split(".")[0], p)):
    if _is_timing(path):
      continue
    value_a, value_b = flat_a.get(path), flat_b.get(path)
    if _same(value_a, value_b):
      continue
    entry = {"path": path, "a": value_a, "b": value_b}
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value_a, value_b))
    if numbers:
      entry["difference"] = value_b - value_a
    found.append(entry)
  return found


def compare(a: dict, b: dict) -> dict:
  """What differs between two report.json contents: {"numbers", "config", "environment": [...], "compared": N}."""
  compared = sum(1 for section in SECTIONS for path in flatten(a.get(section, {}), section) if not _is_timing(path))
  return {"numbers": differences(a, b), "config": differences(a, b, ("config",)),
          "environment": differences(a, b, ("environment",)), "compared": compared}


def _value(value) -> str:
  if isinstance(value, float):
    return f"{value:.6g}"
  return "(absent)" if value is None else str(value)


def format_comparison(result: dict, name_a: str, name_b: str) -> str:
  """The comparison as text: the numbers that differ (a -> b, difference), then the environment fields."""
  numbers, environment = result["numbers"], result["environment"]
  lines = [f"A: {name_a}", f"B: {name_b}"]
  if numbers:
    lines.append(f"numbers: {len(numbers)} of {result['compared']} differ (B - A):")
    for entry in numbers:
      difference = f"  ({entry['difference']:+.6g})" if "difference" in entry else ""
      lines.append(f"  {entry['path']}: {_value(entry['a'])} -> {_value(entry['b'])}{difference}")
  else:
    lines.append(f"numbers: all {result['compared']} the same")
  for section in ("config", "environment"):
    entries = result.get(section, [])
    if entries:
      lines.append(f"{section}: {len(entries)} fields differ:")
      lines += [f"  {entry['path']}: {_value(entry['a'])} -> {_value(entry['b'])}" for entry in entries]
    else:
      lines.append(f"{section}: the same")
  if numbers and not result.get("config") and not environment:
    lines.append("The numbers differ with the same config and environment: the data differ, or a run was not "
                 "deterministic.")
  return "\n".join(lines)
