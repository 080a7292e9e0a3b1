"""A quiet console: what a command prints is ours, unless ``IMGCLF_VERBOSE=1`` asks for it all.

TensorFlow writes its start-up chatter (CUDA probing on a machine without a GPU, CPU feature
notes, absl's "log messages before InitializeLog") from C++ straight to file descriptor 2, before
Python's logging exists, and Keras and TensorFlow warn through Python's ``warnings`` and the
``tensorflow`` logger (``retracing`` notes, deprecations of their own internals). None of it is
actionable for a user of this project, and it buried the lines that are (37 of 220 lines of a
``make repro``). :func:`quiet_startup`, called before anything imports TensorFlow:

- sets ``TF_CPP_MIN_LOG_LEVEL=3`` (unless the environment sets it): no C++ INFO, WARNING or
  ERROR lines (the cuInit "error" on a CPU-only host is one of them);
- silences file descriptor 2 while ``tensorflow`` itself is imported, the one moment those
  pre-initialisation lines are written; a failing import still raises, with its traceback;
- keeps third-party Python warnings and the ``tensorflow``/``absl`` loggers below ERROR off,
  and Keras's progress bars (Keras then logs them to absl instead of stdout).

``IMGCLF_VERBOSE=1`` (or ``imgclf -v``) turns all of this off: every library line comes back, and
``model.fit`` prints Keras's own per-epoch lines too.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

VERBOSE_ENV = "IMGCLF_VERBOSE"
# Python warnings from these packages are theirs to fix, not the user's: hidden unless verbose.
THIRD_PARTY = r"(keras|tensorflow|tf_keras|tf2onnx|onnx|google\.protobuf|absl|h5py|mlflow|hydra)"


def verbose() -> bool:
    """Whether full library logs were asked for (``IMGCLF_VERBOSE`` set to anything but 0)."""
    return os.environ.get(VERBOSE_ENV, "0") not in ("", "0", "false", "no")


def quiet_startup(force_verbose: bool = False) -> None:
    """Keep library start-up noise off the console; call before TensorFlow is imported."""
    if force_verbose:
        os.environ[VERBOSE_ENV] = "1"
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", module=THIRD_PARTY)
    for name in ("tensorflow", "absl", "tf2onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    hooked = {f.name for f in sys.meta_path if isinstance(f, _QuietImport)}
    for name in ("tensorflow", "keras"):
        if name not in sys.modules and name not in hooked:
            sys.meta_path.insert(0, _QuietImport(name))
    if "keras" in sys.modules:
        _quiet_keras(sys.modules["keras"])


def _quiet_keras(keras: ModuleType) -> None:
    # Progress bars (also those of predict calls inside MLflow's model logging) go to absl
    # logging instead of stdout, and absl's logger shows only errors.
    keras.config.disable_interactive_logging()


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` (or ``keras``) as usual, then imports it with file descriptor 2
    silenced (and, for keras, its interactive progress bars off)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once: the C++ runtime is loaded by then
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:  # get_code, is_package, resource readers...
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            self._loader.exec_module(module)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
        if module.__name__ == "keras":
            _quiet_keras(module)
