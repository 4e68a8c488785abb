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


# Below study/ a function takes plain values: arrays, pytrees, dicts, small frozen dataclasses. The study's objects
# (Setup, the ConfigDict) stay in study/ and above; config/ reads configs by definition. Read as data rather than
# as imports: a module below study/ that takes a `setup` or a `config`, or reads `x.config`, `x.ema.decay` or a
# Setup member off a parameter, climbs to the study without importing it (issue 31).
SETUP_FREE = {part for part, layer in LAYERS.items() if layer < LAYERS["study"]}
CONFIG_FREE = SETUP_FREE - {"config"}
# Functions below study/ that may read a section of the ConfigDict, and why.
CONFIG_READERS = {
    # each data source reads its own fields of config.data (tfds's builder options, manual_dir, limits...): the
    # registry of sources (data/__init__.py) hands the section to the source, which alone knows its fields
    **{f"kdjax/data/{path}:{name}": "data sources read their section" for path, name in (
        ("__init__.py", "load"), ("digits.py", "load"), ("cifar.py", "make_builder"), ("cifar.py", "prepare"),
        ("cifar.py", "load"), ("image_folder.py", "load"), ("tfds_common.py", "builder_kwargs"),
        ("tfds_common.py", "check_manual_dir"), ("tfds_common.py", "limits"),
        ("tiny_imagenet/__init__.py", "make_builder"), ("tiny_imagenet/__init__.py", "prepare"),
        ("tiny_imagenet/__init__.py", "load"))},
}


def config_sections() -> set[str]:
  """The ConfigDict's sections (config.ema, config.speed, ...), from config/defaults.py."""
  tree = ast.parse((ROOT / "kdjax" / "config" / "defaults.py").read_text())
  return {node.targets[0].attr for node in ast.walk(tree)
          if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute)
          and isinstance(node.targets[0].value, ast.Name) and node.targets[0].value.id == "config"
          and isinstance(node.value, ast.Call) and ast.unparse(node.value.func).endswith("ConfigDict")}


def setup_members() -> set[str]:
  """The fields and methods of study/builder.Setup that no module below study/ defines a name of its own for:
  reading one off a parameter there is reading the study's object."""
  tree = ast.parse((ROOT / "kdjax" / "study" / "builder.py").read_text())
  setup = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Setup")
  members = {node.name for node in setup.body if isinstance(node, ast.FunctionDef)} | {
      node.target.id for node in setup.body if isinstance(node, ast.AnnAssign)}
  below = set()
  for path in modules():
    if module_name(path).startswith("kdjax") and part(module_name(path)) in SETUP_FREE:
      for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
          below.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
          below.add(node.target.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
          below.add(node.attr)
  return members - below - {"build"}


def climbs(path: pathlib.Path, sections: set[str], members: set[str], readers: dict = CONFIG_READERS,
           root: pathlib.Path = ROOT) -> list[str]:
  """Where a module below study/ takes or reads the study's objects: a parameter named `setup` or typed Setup; a
  parameter named `config` (or `*_config` / `cfg` without a plain type) or typed ConfigDict; on a parameter (or a
  name bound to one), `.config`, `.<config section>.<field>` or a Setup member read. config/ may take a
  ConfigDict; `readers` names the functions below study/ that may read a section of it, and why."""
  rel = str(path.relative_to(root))
  own = part(".".join(path.relative_to(root).with_suffix("").parts))
  found = []

  def visit(function, qual):
    args = function.args
    params = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
    where = f"{rel}:{qual}"
    names = {param.arg for param in params} - {"self", "cls"}
    for node in ast.walk(function):   # plain aliases of a parameter: `x = config`
      if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id in names:
        names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    for param in params:
      annotation = ast.unparse(param.annotation) if param.annotation is not None else ""
      if param.arg == "setup" or "Setup" in annotation:
        found.append(f"{where} takes the study's Setup ({param.arg})")
      config_like = (param.arg == "config" or "ConfigDict" in annotation or (
          (param.arg.endswith("_config") or param.arg == "cfg") and not annotation))
      if config_like and own in CONFIG_FREE and where not in readers:
        found.append(f"{where} takes a ConfigDict ({param.arg})")
    if own not in CONFIG_FREE or where in readers:
      return
    for node in ast.walk(function):
      if not (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)):
        continue
      base = node.value
      if isinstance(base, ast.Name) and base.id in names:
        if node.attr == "config":
          found.append(f"{where} reads {base.id}.config")
        elif node.attr in members:
          found.append(f"{where} reads the Setup member {base.id}.{node.attr}")
      elif (isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) and base.value.id in names
            and base.attr in sections):
        found.append(f"{where} reads the config field {base.value.id}.{base.attr}.{node.attr}")

  def walk(body, prefix):
    for node in body:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        visit(node, prefix + node.name)
        walk(node.body, prefix + node.name + ".")
      elif isinstance(node, ast.ClassDef):
        walk(node.body, prefix + node.name + ".")
  walk(ast.parse(path.read_text()).body, "")
  return found


def test_below_the_study_functions_take_plain_values_not_the_studys_objects():
  sections, members = config_sections(), setup_members()
  found = [climb for path in modules() if module_name(path).startswith("kdjax")
           and part(module_name(path)) in SETUP_FREE for climb in climbs(path, sections, members)]
  assert not found, found
  listed = {f"{path.relative_to(ROOT)}:{node.name}" for path in modules()
            for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}
  assert not set(CONFIG_READERS) - listed, f"CONFIG_READERS names no such function: {set(CONFIG_READERS) - listed}"


def test_the_plain_values_rule_catches_each_kind_of_climb(tmp_path):
  folder = tmp_path / "kdjax" / "store"
  folder.mkdir(parents=True)
  probe = folder / "probe.py"
  probe.write_text(
      "def a(setup):\n  return setup.dataset\n"                          # a Setup by name
      "def b(run, study: 'Setup'):\n  return run\n"                      # by type
      "def c(config, phase):\n  return phase\n"                          # a ConfigDict by name
      "def d(cfg):\n  return cfg\n"                                      # an untyped *_config / cfg
      "def e(held):\n  alias = held\n  return alias.config\n"            # the study's config, through an alias
      "def f(values):\n  return values.ema.decay\n"                      # a config field, whatever the name
      "def g(study):\n  return study.fresh_state('teacher', None)\n"     # a Setup member
      "def h(facts: dict, step_config: 'StepConfig'):\n  return facts['config'], step_config.kind\n")   # plain: ok
  found = climbs(probe, {"ema"}, {"fresh_state", "dataset"}, readers={}, root=tmp_path)
  assert found == ["kdjax/store/probe.py:a takes the study's Setup (setup)",
                   "kdjax/store/probe.py:a reads the Setup member setup.dataset",
                   "kdjax/store/probe.py:b takes the study's Setup (study)",
                   "kdjax/store/probe.py:c takes a ConfigDict (config)",
                   "kdjax/store/probe.py:d takes a ConfigDict (cfg)",
                   "kdjax/store/probe.py:e reads alias.config",
                   "kdjax/store/probe.py:f reads the config field values.ema.decay",
                   "kdjax/store/probe.py:g reads the Setup member study.fresh_state"], found


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
