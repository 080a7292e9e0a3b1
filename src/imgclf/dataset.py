"""Scan a folder-per-class dataset: splits, classes (from folder names) and image files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from imgclf.errors import ImgclfError


class DatasetError(ImgclfError, ValueError):
    """The dataset layout is unusable; the message names the folder and what to do."""


def check_inside(path: Path, root: Path) -> None:
    """Refuse a symlink that leads outside the dataset root (the data would not be versioned)."""
    if not path.is_symlink():
        return
    target = path.resolve()
    if not target.is_relative_to(root.resolve()):
        raise DatasetError(
            f"{path}: symlink escapes the dataset root {root} (points to {target}); "
            "copy the file into the dataset or remove the link"
        )


def is_hidden(name: str) -> bool:
    """Dot-entries (``.DS_Store``, ``._x``, ``.ipynb_checkpoints``) and ``Thumbs.db``."""
    return name.startswith(".") or name.lower() in ("thumbs.db", "desktop.ini")


@dataclass
class Scan:
    """Files found under a dataset root, by split and class."""

    root: Path
    classes: list[str]
    files: list[tuple[str, str, Path]] = field(default_factory=list)  # (split, class, path)
    ignored: list[str] = field(default_factory=list)


def scan_dataset(root: Path, splits: tuple[str, ...]) -> Scan:
    """List the image candidates under ``root/<split>/<class>/``.

    Classes come from the folder names of the first split; every split must have the same
    classes, and no class folder may be empty.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found (did `dvc pull` run?)")
    for split in splits:
        check_inside(root / split, root)
    ignored: list[str] = []
    per_split: dict[str, dict[str, list[Path]]] = {}
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DatasetError(f"{split_dir}: split folder not found; expected {list(splits)}")
        classes: dict[str, list[Path]] = {}
        for entry in sorted(split_dir.iterdir()):
            if is_hidden(entry.name):
                ignored.append(str(entry.relative_to(root)))
                continue
            check_inside(entry, root)
            if not entry.is_dir():
                ignored.append(str(entry.relative_to(root)))
                continue
            files: list[Path] = []
            for f in sorted(entry.rglob("*")):
                rel = f.relative_to(entry)
                if any(is_hidden(part) for part in rel.parts):
                    if f.is_file():
                        ignored.append(str(f.relative_to(root)))
                    continue
                check_inside(f, root)
                # A broken link stays in the list: the loader rejects it as unreadable.
                if f.is_file() or f.is_symlink():
                    files.append(f)
            if not files:
                raise DatasetError(
                    f"{entry}: class folder is empty; add images or remove the folder"
                )
            classes[entry.name] = files
        if not classes:
            raise DatasetError(f"{split_dir}: no class folders found")
        per_split[split] = classes
    class_names = sorted(per_split[splits[0]])
    for split in splits[1:]:
        if sorted(per_split[split]) != class_names:
            missing = set(class_names) ^ set(per_split[split])
            raise DatasetError(
                f"{root}: splits '{splits[0]}' and '{split}' have different classes "
                f"(only in one of them: {sorted(missing)})"
            )
    scan = Scan(root=root, classes=class_names, ignored=ignored)
    for split in splits:
        for cls in class_names:
            scan.files += [(split, cls, p) for p in per_split[split][cls]]
    return scan


def detect_splits(root: Path, train_dir: str, test_dir: str) -> tuple[str, ...]:
    """The splits of ``root``: (train_dir, test_dir), or ``(".",)`` for one folder of classes.

    Raises:
        DatasetError: when only one of the two split folders exists, or ``root`` is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found (did `dvc pull` run?)")
    has_train, has_test = (root / train_dir).is_dir(), (root / test_dir).is_dir()
    if has_train and has_test:
        return (train_dir, test_dir)
    if has_train or has_test:
        missing = test_dir if has_train else train_dir
        raise DatasetError(
            f"{root / missing}: split folder not found; a dataset with '{train_dir}' needs "
            f"'{test_dir}' too (or use one folder of class folders)"
        )
    return (".",)
