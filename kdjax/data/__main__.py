"""`python -m kdjax.data info --config ema.py [--json]`: what a config's data set holds (kdjax.cli.data_info)."""

if __name__ == "__main__":
  import sys
  from kdjax.cli import data_info
  sys.exit(data_info.main())
