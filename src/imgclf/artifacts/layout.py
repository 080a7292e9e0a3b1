"""The two building blocks of every output folder: :class:`Outputs` (a folder) and :class:`File`.

On an instance an attribute is a path (``PreprocessOutputs(root).shards``); on the class it is
the file's entry, whose ``.name`` is the file name.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self, overload

ARTIFACTS_DIR = "artifacts"  # the project's stage outputs: artifacts/<stage>/
MANIFEST_NAME = "manifest.json"  # a model folder's file hashes, and a shard folder's manifest


class File:
    """A file in a stage's output folder: its path on an instance, this entry on the class."""

    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> File: ...
    @overload
    def __get__(self, obj: Outputs, owner: type | None = None) -> Path: ...
    def __get__(self, obj: Outputs | None, owner: type | None = None) -> Path | File:
        return self if obj is None else obj.root / self.name


class Outputs:
    """A stage's output folder (``root``); subclasses name its files as :class:`File` s."""

    STAGE: ClassVar[str]

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    @classmethod
    def in_project(cls, project: Path) -> Self:
        """The folder this stage writes in ``project`` (``artifacts/<stage>``, as dvc.yaml)."""
        return cls(project / ARTIFACTS_DIR / cls.STAGE)

    @classmethod
    def names(cls) -> dict[str, str]:
        """``{attribute: file name}`` of every file this folder holds."""
        return {k: v.name for c in cls.__mro__ for k, v in vars(c).items() if isinstance(v, File)}
