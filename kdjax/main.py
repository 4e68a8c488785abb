"""`python -m kdjax.main --config ema.py --workdir runs/ema`: the study's command (kdjax.cli.main)."""

from kdjax.cli.main import run

if __name__ == "__main__":
  run()
