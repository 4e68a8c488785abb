"""--help and --helpfull for every entry point (all parse with absl flags: kdjax.main's own help aside, parity.check,
parity.export, kdjax.data, kdjax.cli.inspection, kdjax.tools.benchmark, kdjax.tools.onednn_threads).

absl's own --help runs after flag parsing, so a tool that requires --config answered `--config is required` (exit 2),
and one with a config-dict flag printed the whole default config as YAML and exited 1. Here --help is answered
before anything is parsed: the tool's docstring (what it does, examples), then its own flags with their defaults,
exit 0. --helpfull adds every flag, absl's and JAX's included. A config flag's default is never printed (it is a
whole config; `python -m kdjax.main --config ema.py --show_config` lists its fields).
"""

import sys

from absl import flags
from absl.flags import _helpers

from kdjax.cli import exits

HELP_ARGS = frozenset({"-h", "-help", "--help", "-helpshort", "--helpshort", "-?"})
HELPFULL_ARGS = frozenset({"-helpfull", "--helpfull"})
CONFIG_NOTE = ("(a whole config; change a field with --{name}.FIELD=VALUE; "
               "`python -m kdjax.main --config ema.py --show_config` lists every field)")


def asked(argv: list[str]) -> str | None:
  """"help", "helpfull" or None: what the command line asks for (argv[0] is the program)."""
  given = set(argv[1:])
  if given & HELPFULL_ARGS:
    return "helpfull"
  if given & HELP_ARGS:
    return "help"
  return None


def _is_config(flag) -> bool:
  return type(flag).__module__.startswith("ml_collections")


def flag_lines(names, values: flags.FlagValues | None = None) -> str:
  """The named flags (of `values`, default flags.FLAGS) as absl's help renders them, a config flag without its
  default."""
  values = flags.FLAGS if values is None else values
  lines = []
  for name in names:
    flag = values[name]
    text = f"--[no]{flag.name}: " if flag.boolean else f"--{flag.name}: "
    text = _helpers.text_wrap(text + (flag.help or ""), indent="    ", firstline_indent="  ")
    if _is_config(flag):
      text += "\n" + _helpers.text_wrap(CONFIG_NOTE.format(name=name), indent="    ")
    elif flag.default_as_str:
      text += "\n" + _helpers.text_wrap(f"(default: {flag.default_as_str})", indent="    ")
    lines.append(text)
  return "\n".join(lines)


def every_flag(values: flags.FlagValues | None = None) -> str:
  """absl's --helpfull listing (every module's flags; of a tool's own FlagValues, its flags), config flags'
  defaults left out."""
  values = flags.FLAGS if values is None else values
  hidden = {}
  for flag in set(values._flags().values()):   # pylint: disable=protected-access
    if _is_config(flag):
      hidden[flag] = flag.default_as_str
      flag.default_as_str = None
  try:   # absl heads the program's own flags with its file's path: a path of this machine, not a flag
    return values.get_help().replace(f"{sys.argv[0]}:", "this tool:")
  finally:
    for flag, default in hidden.items():
      flag.default_as_str = default


def usage(doc: str, names, examples: list[str], values: flags.FlagValues | None = None) -> str:
  """--help's text: the docstring, the examples, the flags."""
  shown = "\n".join(f"  {example}" for example in examples)
  more = "--helpfull lists every flag, absl's included." if values is None else "--helpfull lists them as absl does."
  return f"{doc.strip()}\n\nexamples:\n{shown}\n\nflags:\n{flag_lines(names, values)}\n\n{more}"


def answer(argv: list[str], doc: str, names, examples: list[str], values: flags.FlagValues | None = None) -> None:
  """Prints --help's (or --helpfull's) text and exits 0 when the command line asks for it; else returns.
  values: a tool's own FlagValues (exits.flag_values), default flags.FLAGS."""
  kind = asked(argv)
  if kind is None:
    return
  text = usage(doc, names, examples, values)
  if kind == "helpfull":
    heading = "every flag, absl's included" if values is None else "every flag"
    text += f"\n\n{heading}:\n{every_flag(values)}"
  try:
    print(text, flush=True)
  except BrokenPipeError:   # e.g. `--help | head`: the reader has what it wanted
    exits.exit_now(0)
  sys.exit(0)
