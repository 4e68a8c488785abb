"""kdjax/report/figures.py: the one place a figure is saved; a figure that cannot be written is named."""

import pytest

from kdjax.study import experiment

from tests.support import ckpt as support


def test_a_figure_that_cannot_be_written_is_named_and_report_md_does_not_link_it(tmp_path, tmp_path_factory,
                                                                                 monkeypatch):
  import errno
  from matplotlib.figure import Figure
  from kdjax.errors import WriteError
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)   # rerun: every phase loaded, the report anew
  (workdir / "report.md").unlink()
  (workdir / "curves.png").unlink()

  def disk_full(self, path, **kwargs):
    open(path, "wb").write(b"\x89PNG half")
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(Figure, "savefig", disk_full)
  with pytest.raises(WriteError) as error:
    experiment.train_and_evaluate(support.study_config(), workdir)
  assert str(error.value) == f"cannot write {workdir / 'curves.png'}: No space left on device"
  assert not (workdir / "curves.png").exists() and not (workdir / "report.md").exists()
