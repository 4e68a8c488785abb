"""kdjax's build backend: setuptools', plus the optional oneDNN extension (kdjax/nets/_onednn.cc: convs and pools).

pyproject.toml names this module as the PEP 517 backend (backend-path kdjax/nets), so `pip install -e .` builds the
extension with no setup.py at the top of the repository: the hooks are setuptools' own, except that setuptools'
run_setup executes this file, whose `setup()` call adds the extension. Everything else is in pyproject.toml.

The extension is optional: without a C++ compiler, the oneDNN headers (onednn-devel-cpu-gomp) or JAX's FFI headers,
or on a machine that is not x86_64, the build still succeeds without it and writes the reason to
kdjax/nets/_onednn.unavailable, which kdjax reports ("oneDNN extension not built: <reason>") while running its
convolutions in XLA. KDJAX_BUILD_ONEDNN=0 skips it on purpose.

At run time libdnnl.so.3 is found through the extension's rpath: `$ORIGIN/../../../..` (a wheel installed into
<prefix>/lib/pythonX.Y/site-packages/kdjax/nets/, next to <prefix>/lib/libdnnl.so.3 from onednn-cpu-gomp) and
<sys.prefix>/lib (an editable install, whose extension stays in the checkout).
"""

import importlib.metadata
import os
import pathlib
import platform
import sys

from setuptools import Extension, setup
from setuptools import build_meta
from setuptools.command.build_ext import build_ext

NAME = "kdjax.nets._onednn"
SOURCE = "kdjax/nets/_onednn.cc"
STATUS = "_onednn.unavailable"


def _installed_file(distribution: str, suffix: str) -> pathlib.Path:
  """The file of an installed distribution whose path ends with `suffix` (data files live outside site-packages)."""
  for file in importlib.metadata.distribution(distribution).files or ():
    if str(file).replace("\\", "/").endswith(suffix):
      return pathlib.Path(file.locate()).resolve()
  raise FileNotFoundError(f"{distribution} has no {suffix}")


def _configure(ext: Extension) -> None:
  """Fills in the header and library folders; raises with a one-line reason when something is missing."""
  if platform.machine().lower() not in ("x86_64", "amd64"):
    raise RuntimeError(f"oneDNN's CPU wheels are x86_64 only, this machine is {platform.machine()}")
  try:
    header = _installed_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
    library = _installed_file("onednn-cpu-gomp", "/libdnnl.so.3")
  except importlib.metadata.PackageNotFoundError as error:
    raise RuntimeError(f"the build needs the package {error.name or error} (pip installs it from pyproject.toml)")
  import jax.ffi  # the typed FFI's headers (xla/ffi/api/ffi.h) ship with jaxlib

  ext.include_dirs = [str(header.parents[2])]
  ext.extra_compile_args = ["-std=c++17", "-O2", "-fopenmp", "-isystem", jax.ffi.include_dir()]
  ext.extra_link_args = ["-fopenmp", str(library.parent / "libdnnl.so.3"),
                         "-Wl,-rpath,$ORIGIN/../../../..", f"-Wl,-rpath,{pathlib.Path(sys.prefix) / 'lib'}"]


class OptionalBuildExt(build_ext):
  """build_ext that records why the extension was not built instead of failing the install."""

  def build_extension(self, ext):
    status = pathlib.Path(self.get_ext_fullpath(ext.name)).parent / STATUS
    status.unlink(missing_ok=True)
    try:
      if os.environ.get("KDJAX_BUILD_ONEDNN", "1") == "0":
        raise RuntimeError("skipped: KDJAX_BUILD_ONEDNN=0")
      _configure(ext)
      super().build_extension(ext)
    except Exception as error:  # compiler missing or failing, headers missing: kdjax runs without it
      reason = " ".join(str(error).split()) or type(error).__name__
      status.parent.mkdir(parents=True, exist_ok=True)
      status.write_text(reason + "\n")
      self.warn(f"kdjax: oneDNN extension not built: {reason}")

  def copy_extensions_to_source(self):
    """--inplace (editable installs): copy what was built, and the reason file where nothing was."""
    built_path = lambda ext: pathlib.Path(self.build_lib, self.get_ext_filename(ext.name))
    missing = [ext for ext in self.extensions if not built_path(ext).exists()]
    extensions, self.extensions = self.extensions, [ext for ext in self.extensions if ext not in missing]
    try:
      super().copy_extensions_to_source()
    finally:
      self.extensions = extensions
    for ext in extensions:
      target = pathlib.Path(*ext.name.split(".")[:-1], STATUS)
      target.unlink(missing_ok=True)
      if ext in missing:
        target.write_text((built_path(ext).parent / STATUS).read_text())


def build() -> None:
  """setuptools' setup() with the extension (as setuptools' backend runs a setup.py)."""
  setup(ext_modules=[Extension(NAME, sources=[SOURCE], language="c++")], cmdclass={"build_ext": OptionalBuildExt})


class _Backend(build_meta._BuildMetaBackend):
  """setuptools' backend, whose "setup.py" is this file."""

  def run_setup(self, setup_script: str = "setup.py") -> None:
    super().run_setup(setup_script=__file__)


_BACKEND = _Backend()
get_requires_for_build_wheel = _BACKEND.get_requires_for_build_wheel
get_requires_for_build_sdist = _BACKEND.get_requires_for_build_sdist
get_requires_for_build_editable = _BACKEND.get_requires_for_build_editable
prepare_metadata_for_build_wheel = _BACKEND.prepare_metadata_for_build_wheel
prepare_metadata_for_build_editable = _BACKEND.prepare_metadata_for_build_editable
build_wheel = _BACKEND.build_wheel
build_sdist = _BACKEND.build_sdist
build_editable = _BACKEND.build_editable

if __name__ == "__main__":   # setuptools' run_setup executes this file as __main__; or `python kdjax/nets/onednn_build.py build_ext --inplace`
  build()
