"""The tree shows the architecture: every module is named in docs/architecture.md, and imports go one way
(foundation -> nets, data -> training -> config -> store -> report -> study -> entry points), with no circle
between modules, function-level imports included."""

import ast
import pathlib
import re

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


# parity/ and kdjax/tools/ as layers (issue 31): parity sits above kdjax's library; kdjax reaches it only as a program.
PARITY_MAY_IMPORT = {"kdjax.cli.exits", "kdjax.cli.help"}   # the entry points' shared error printer and --help
CHILD_PROGRAM = ("kdjax.tools.benchmark.torch_peer", "parity.torch_child")   # the one place kdjax names parity


def imports_of(path: pathlib.Path, package: str) -> set[str]:
  """The modules of `package` that `path` imports, anywhere in it."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names if alias.name.split(".")[0] == package}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
      found |= {f"{node.module}.{alias.name}" for alias in node.names}
  return found


def module_strings(path: pathlib.Path, package: str) -> set[str]:
  """String constants of `path` that name a module of `package` ("parity.torch_child"): a program it starts."""
  return {node.value for node in ast.walk(ast.parse(path.read_text()))
          if isinstance(node, ast.Constant) and isinstance(node.value, str)
          and re.fullmatch(rf"{package}(\.\w+)+", node.value)}


def parity_layer_violations(named: dict[str, pathlib.Path]) -> list[str]:
  """What breaks the parity/tools layering among the modules `named` ({module name: path}; the test below)."""
  wrong = []
  for name, path in sorted(named.items()):
    if name.startswith("kdjax"):
      wrong += [f"{name} imports {target}" for target in sorted(imports_of(path, "parity"))]
      wrong += [f"{name} names {text}" for text in sorted(module_strings(path, "parity"))
                if (name, text) != CHILD_PROGRAM]
    else:
      wrong += [f"{name} imports {target}" for target in sorted(kdjax_imports(path))
                if LAYERS[part(target)] > LAYERS["study"] and target not in PARITY_MAY_IMPORT]
  return wrong


def test_parity_and_tools_are_layers_with_no_loop_between_kdjax_and_parity():
  """parity/ (the PyTorch reference, the checks, the benchmark's PyTorch side) is a layer above kdjax's library: it
  imports kdjax's floors (foundation .. study) and the entry points' shared kdjax.cli.exits/help, never kdjax.tools
  or another entry point; nothing in kdjax imports parity, and kdjax names a parity module only where the benchmark
  starts its PyTorch child (kdjax/tools/benchmark/torch_peer.py: `python -m parity.torch_child`). So the package
  loop kdjax.tools -> parity -> kdjax cannot come back."""
  named = {module_name(path): path for path in modules()}
  assert not parity_layer_violations(named)
  uses = {(name.split(".")[0], other) for name, path in named.items() for other in ("kdjax", "parity")
          if other != name.split(".")[0] and imports_of(path, other)}
  assert uses == {("parity", "kdjax")}, uses   # one way: parity uses kdjax, never back


def test_the_parity_layer_rule_catches_each_kind_of_crossing(tmp_path):
  tool, reference = tmp_path / "tool.py", tmp_path / "reference.py"
  tool.write_text("def late():\n  from parity import reference\n  return ['-m', 'parity.torch_child']\n")
  reference.write_text("from kdjax.tools.benchmark import steps\nfrom kdjax.cli import exits\n"
                       "from kdjax.study import builder\nfrom kdjax.cli import main\n")
  assert parity_layer_violations({"kdjax.tools.probe": tool, "parity.probe": reference}) == [
      "kdjax.tools.probe imports parity.reference", "kdjax.tools.probe names parity.torch_child",
      "parity.probe imports kdjax.cli.main", "parity.probe imports kdjax.tools.benchmark.steps"]
  # the benchmark's child program, named where it is started, is the one crossing allowed
  assert parity_layer_violations({CHILD_PROGRAM[0]: tool}) == [f"{CHILD_PROGRAM[0]} imports parity.reference"]
