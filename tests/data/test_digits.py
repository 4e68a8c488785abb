"""The embedded digits set (kdjax/data/digits.py)."""

from tests.conftest import tiny_config


def test_digits_says_it_does_not_read_data_manual_dir(tmp_path, caplog):
  from kdjax import data as data_lib
  config = tiny_config(**{"data.manual_dir": str(tmp_path / "missing")})
  with caplog.at_level("WARNING", logger="kdjax"):
    data_lib.load(config.data)
  [warning] = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
  assert warning.startswith(f"data.manual_dir={tmp_path / 'missing'} is not read: data.name=digits")
  assert "does not exist" in warning
