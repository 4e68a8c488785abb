"""The tree shows the architecture: every module is named in docs/architecture.md, and imports go one way
(foundation -> nets, data -> training -> config -> store -> report -> study -> entry points), with no circle
between modules, function-level imports included."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Layer of each top-level part of kdjax; a module may import kdjax modules of its own part or of a lower layer.
LAYERS = {"errors": 0, "phases": 0, "progress": 0, "nets": 1, "data": 1, "training": 2, "config": 3, "store": 4,
          "report": 5, "study": 6, "cli": 7, "tools": 7, "main": 7, "__init__": 7}
ENTRY_POINTS = {"kdjax/data/__main__.py"}   # `python -m kdjax.data`: a shim to kdjax.cli, a program not a module


def modules() -> list[pathlib.Path]:
  return sorted(path for folder in ("kdjax", "parity") for path in (ROOT / folder).rglob("*.py")
                if "__pycache__" not in path.parts)


def part(module: str) -> str:
  """"kdjax.training.train" -> "training"; "kdjax" -> "__init__"."""
  pieces = module.split(".")
  return pieces[1] if len(pieces) > 1 else "__init__"


def kdjax_imports(path: pathlib.Path) -> set[str]:
  """The kdjax modules `path` imports, anywhere in it (`from kdjax.x import y` counts y when it is a module)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names if alias.name.startswith("kdjax")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdjax"):
      for alias in node.names:
        candidate = f"{node.module}.{alias.name}"
        is_module = any((ROOT / candidate.replace(".", "/")).with_suffix(suffix).exists() or
                        (ROOT / candidate.replace(".", "/")).is_dir() for suffix in (".py",))
        found.add(candidate if is_module else node.module)
  return found


def module_name(path: pathlib.Path) -> str:
  relative = path.relative_to(ROOT).with_suffix("")
  parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
  return ".".join(parts)


def test_every_module_is_named_in_the_architecture_map():
  text = (ROOT / "docs" / "architecture.md").read_text()
  missing = [str(path.relative_to(ROOT)) for path in modules()
             if str(path.relative_to(ROOT)) not in text
             and not (path.name == "__init__.py" and not path.read_text().strip())]
  assert not missing, f"docs/architecture.md does not name {missing}"


def upward(name: str, imported: set[str]) -> list[str]:
  """The imports of module `name` that go to another part of kdjax at its own layer or above."""
  own = part(name)
  return [f"{name} imports {target}" for target in sorted(imported)
          if part(target) != own and LAYERS[part(target)] >= LAYERS[own] and LAYERS[own] < 7]


def test_imports_go_one_way():
  wrong = []
  for path in modules():
    name = module_name(path)
    if name.startswith("kdjax") and str(path.relative_to(ROOT)) not in ENTRY_POINTS:
      wrong += upward(name, kdjax_imports(path))
  assert not wrong, wrong


def test_no_import_circle():
  graph = {module_name(path): {imported for imported in kdjax_imports(path)}
           for path in modules() if str(path.relative_to(ROOT)) not in ENTRY_POINTS}
  graph = {name: {target for target in targets if target in graph and target != name}
           for name, targets in graph.items()}
  visiting, done, circles = set(), set(), []

  def visit(node, trail):
    if node in done:
      return
    if node in visiting:
      circles.append(" -> ".join(trail[trail.index(node):] + [node]))
      return
    visiting.add(node)
    for target in sorted(graph[node]):
      visit(target, trail + [node])
    visiting.discard(node)
    done.add(node)
  for node in sorted(graph):
    visit(node, [])
  assert not circles, circles


def test_the_layer_rule_catches_an_upward_import_even_inside_a_function(tmp_path):
  probe = tmp_path / "probe.py"
  probe.write_text("def late():\n  from kdjax.study import experiment\n  from kdjax import data\n")
  assert kdjax_imports(probe) == {"kdjax.study.experiment", "kdjax.data"}
  assert upward("kdjax.training.probe", kdjax_imports(probe)) == [
      "kdjax.training.probe imports kdjax.study.experiment"]
