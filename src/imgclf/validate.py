"""Validate a folder-per-class dataset: decode every file once, find duplicates and leakage.

Used by the ingest stage (which writes the result as DVC outputs and to MLflow) and by
``imgclf validate`` (which only prints it). Works on the ``Training_data``/``Testing_Data``
layout or on a single folder of class folders.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.config import DataConfig
from imgclf.dataset import scan_dataset
from imgclf.images import ImageRejected, open_image
from imgclf.leakage import Item, dhash, find_duplicates
from imgclf.parallel import Engine, map_files


@dataclass
class Validation:
    """Everything validation found; ``report`` is the JSON-ready summary."""

    root: Path
    splits: tuple[str, ...]
    classes: list[str]
    rows: list[dict[str, Any]]  # accepted files, index.csv rows
    rejected: list[dict[str, str]]
    ignored: list[str]
    duplicates: dict[str, Any]  # find_duplicates' report without the per-file lists
    report: dict[str, Any]
    problems: list[str]  # why the dataset is not usable; empty when it is

    @property
    def usable(self) -> bool:
        return not self.problems


def _inspect(path: Path, *, min_side: int, max_pixels: int) -> dict[str, Any]:
    try:
        rgb, info = open_image(path, min_side=min_side, max_pixels=max_pixels)
    except ImageRejected as exc:
        return {"ok": False, "reason": exc.reason, "detail": exc.detail}
    return {
        "ok": True,
        "sha256": info.sha256,
        "width": info.width,
        "height": info.height,
        "dhash": dhash(rgb),
    }


def _size_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {}
    w = np.array([r["width"] for r in rows])
    h = np.array([r["height"] for r in rows])
    return {
        "width": {"min": int(w.min()), "median": float(np.median(w)), "max": int(w.max())},
        "height": {"min": int(h.min()), "median": float(np.median(h)), "max": int(h.max())},
    }


def validate_dataset(root: Path, data: DataConfig, splits: tuple[str, ...]) -> Validation:
    """Scan, decode and cross-check every file under ``root/<split>/<class>/``.

    Args:
        splits: ``(train_dir, test_dir)`` or ``(".",)`` for a single folder of class folders.

    Raises:
        DatasetError: the layout itself is unusable (missing folder, empty class, a class in
            one split only, a symlink escaping the root).
    """
    root = Path(root)
    scan = scan_dataset(root, splits)
    inspect = partial(_inspect, min_side=data.min_side, max_pixels=data.max_pixels)
    results = map_files(inspect, [p for _, _, p in scan.files], Engine.of(data))

    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, str]] = []
    for (split, cls, path), res in zip(scan.files, results, strict=True):
        rel = path.relative_to(root).as_posix()
        if res["ok"]:
            rows.append(
                {
                    "path": rel,
                    "class": cls,
                    "split": split,
                    "sha256": res["sha256"],
                    "width": res["width"],
                    "height": res["height"],
                    "dhash": res["dhash"],
                }
            )
        else:
            rejected.append(
                {
                    "path": rel,
                    "class": cls,
                    "split": split,
                    "reason": res["reason"],
                    "detail": res["detail"],
                }
            )

    two = len(splits) == 2
    dups = find_duplicates(
        [Item(r["path"], r["class"], r["split"], r["sha256"], r["dhash"]) for r in rows],
        data.near_dup_distance,
        splits[0] if two else None,
        splits[1] if two else None,
        max_group_fraction=data.max_group_fraction,
    )
    for row, group, leak in zip(rows, dups.pop("group"), dups.pop("leak"), strict=True):
        row["group"] = group
        row["leak"] = int(leak)

    counts = {s: {c: 0 for c in scan.classes} for s in splits}
    for row in rows:
        counts[row["split"]][row["class"]] += 1
    rejected_counts = {s: {c: 0 for c in scan.classes} for s in splits}
    for r in rejected:
        rejected_counts[r["split"]][r["class"]] += 1

    total = len(scan.files)
    problems: list[str] = []
    for s in splits:
        for c in scan.classes:
            if counts[s][c] == 0:
                problems.append(f"{(root / s / c)}: no usable image (all files rejected)")
    if total and len(rejected) / total > data.max_rejected_fraction:
        problems.append(
            f"{root}: {len(rejected)} of {total} files rejected "
            f"({len(rejected) / total:.1%} > data.max_rejected_fraction="
            f"{data.max_rejected_fraction:.1%})"
        )

    report: dict[str, Any] = {
        "dataset": root.name,
        "layout": "train_test" if two else "single",
        "classes": scan.classes,
        "splits": {"train": splits[0], "test": splits[1]} if two else {"all": splits[0]},
        "n_files": total,
        "n_accepted": len(rows),
        "n_rejected": len(rejected),
        "n_ignored": len(scan.ignored),
        "counts": counts,
        "rejected_counts": rejected_counts,
        "rejected_reasons": dict(Counter(r["reason"] for r in rejected)),
        "rejected": rejected,
        "ignored": scan.ignored,
        "image_sizes": _size_stats(rows),
        "duplicates": dups["summary"],
        "usable": not problems,
        "problems": problems,
    }
    return Validation(
        root, splits, scan.classes, rows, rejected, scan.ignored, dups, report, problems
    )


def render_text(v: Validation, max_listed: int = 20) -> str:
    """A readable plain-text report (the ``imgclf validate`` output)."""
    r, d = v.report, v.duplicates["summary"]
    lines = [
        f"Dataset {v.root}  ({'usable' if v.usable else 'NOT USABLE'})",
        f"  classes: {', '.join(v.classes)}",
        f"  files: {r['n_files']} found, {r['n_accepted']} accepted, "
        f"{r['n_rejected']} rejected, {r['n_ignored']} hidden/system entries ignored",
    ]
    width = max(len(c) for c in v.classes)
    lines.append("  accepted per class: " + "  ".join(f"[{s}]" for s in v.splits))
    for c in v.classes:
        lines.append(f"    {c:<{width}}  " + "  ".join(str(r["counts"][s][c]) for s in v.splits))
    if r["image_sizes"]:
        w, h = r["image_sizes"]["width"], r["image_sizes"]["height"]
        lines.append(
            f"  sizes: width {w['min']}-{w['max']} (median {w['median']:.0f}), "
            f"height {h['min']}-{h['max']} (median {h['median']:.0f})"
        )
    if v.rejected:
        lines.append("Rejected files:")
        lines += [f"  {x['path']}\t{x['reason']}\t{x['detail']}" for x in v.rejected]
    lines.append(f"Duplicates (near = dHash distance <= {d['near_dup_distance']}):")
    lines.append(
        f"  exact groups: {d['exact_groups']} ({d['exact_groups_across_splits']} across "
        f"splits, {d['exact_groups_within_split']} within one split)"
    )
    lines.append(
        f"  near-duplicate pairs: {d['near_pairs']}; within-split groups: "
        f"{d['near_groups_within_split']} holding {d['files_in_near_groups']} files"
        + (f" ({d['cut_pairs']} pairs cut by data.max_group_fraction)" if d["cut_pairs"] else "")
    )
    lines.append(f"  label conflicts (same image, different class): {d['label_conflicts']}")
    for c in v.duplicates["label_conflicts"][:max_listed]:
        lines.append(
            f"    {c['a']} [{c['a_class']}] ~ {c['b']} [{c['b_class']}] (distance {c['distance']})"
        )
    if len(v.splits) == 2:
        lines.append(
            f"Leakage: {d['leaky_test_files']} of {d['n_test']} test files have a "
            f"training twin ({d['leaky_test_files_exact']} byte-identical); "
            f"{d['leakfree_test_files']} are leak-free"
        )
        for item in v.duplicates["leakage"][:max_listed]:
            twins = ", ".join(f"{t['path']} (d={t['distance']})" for t in item["twins"][:3])
            more = len(item["twins"]) - 3
            lines.append(f"  {item['path']} <- {twins}" + (f" +{more} more" if more > 0 else ""))
        if len(v.duplicates["leakage"]) > max_listed:
            lines.append(
                f"  ... {len(v.duplicates['leakage']) - max_listed} more (--json lists all)"
            )
    for p in v.problems:
        lines.append(f"PROBLEM: {p}")
    return "\n".join(lines)


def render_card(v: Validation, figures: list[str]) -> str:
    """The dataset card (markdown): counts, rejects, duplicates, leakage, figures."""
    r, d = v.report, v.duplicates["summary"]
    out = [f"# Dataset card: {r['dataset']}", ""]
    out += [
        "| class | " + " | ".join(v.splits) + " | rejected |",
        "|---|" + "---|" * len(v.splits) + "---|",
    ]
    for c in v.classes:
        rej = sum(r["rejected_counts"][s][c] for s in v.splits)
        out.append(
            f"| {c} | " + " | ".join(str(r["counts"][s][c]) for s in v.splits) + f" | {rej} |"
        )
    reasons = ", ".join(f"{k}: {n}" for k, n in sorted(r["rejected_reasons"].items()))
    out += [
        "",
        f"- files: {r['n_files']}, accepted {r['n_accepted']}, rejected "
        f"{r['n_rejected']}"
        + (f" ({reasons})" if reasons else "")
        + f", ignored hidden/system entries {r['n_ignored']}",
    ]
    if r["image_sizes"]:
        w, h = r["image_sizes"]["width"], r["image_sizes"]["height"]
        out.append(
            f"- image width {w['min']}..{w['max']} px (median {w['median']:.0f}), "
            f"height {h['min']}..{h['max']} px (median {h['median']:.0f})"
        )
    out += [
        "",
        f"## Duplicates and leakage (near: dHash 8x9, Hamming distance <= "
        f"{d['near_dup_distance']})",
        "",
        f"- exact duplicate groups (sha256): {d['exact_groups']}, of which "
        f"{d['exact_groups_across_splits']} span train and test",
        f"- near-duplicate pairs: {d['near_pairs']}; near-duplicate groups within a split: "
        f"{d['near_groups_within_split']} ({d['files_in_near_groups']} files), kept on one "
        "side of the train/validation split"
        + (
            f" ({d['cut_pairs']} look-alike pairs cut to keep groups within "
            "`data.max_group_fraction`)"
            if d["cut_pairs"]
            else ""
        ),
        f"- label conflicts: {d['label_conflicts']}",
    ]
    if len(v.splits) == 2:
        out.append(
            f"- **leakage: {d['leaky_test_files']} of {d['n_test']} test files have a "
            f"training twin** ({d['leaky_test_files_exact']} byte-identical); "
            f"{d['leakfree_test_files']} leak-free test files. `leakfree_accuracy` is "
            "measured on those; see leakage.json for each file and its twins."
        )
    if v.rejected:
        out += ["", "## Rejected files", "", "| file | reason | detail |", "|---|---|---|"]
        out += [f"| {x['path']} | {x['reason']} | {x['detail']} |" for x in v.rejected]
    out += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(out) + "\n"
