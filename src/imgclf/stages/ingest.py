"""ingest: scan the folder-per-class dataset, decode every file once, write an index and a report.

Outputs (``out_dir``): ``index.csv`` (accepted files: path, class, split, sha256, width, height)
and ``report.json`` (counts, classes, ignored entries, rejected files with reason codes).
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from imgclf.config import Config, DataConfig
from imgclf.dataset import scan_dataset
from imgclf.fileio import write_json, write_text
from imgclf.images import ImageRejected, open_image
from imgclf.parallel import map_in_processes

log = logging.getLogger(__name__)

INDEX_FIELDS = ("path", "class", "split", "sha256", "width", "height")


class IngestError(RuntimeError):
    """The dataset failed a configured limit."""


@dataclass
class IngestResult:
    classes: list[str]
    n_accepted: int
    n_rejected: int
    n_ignored: int
    index_path: Path
    report_path: Path


def _inspect(path: Path, *, min_side: int, max_pixels: int) -> dict[str, Any]:
    try:
        _, info = open_image(path, min_side=min_side, max_pixels=max_pixels)
    except ImageRejected as exc:
        return {"ok": False, "reason": exc.reason, "detail": exc.detail}
    return {"ok": True, "sha256": info.sha256, "width": info.width, "height": info.height}


def run(cfg: Config, *, in_dir: Path, out_dir: Path) -> IngestResult:
    """Index the dataset under ``in_dir`` into ``out_dir``."""
    data: DataConfig = cfg.data
    scan = scan_dataset(in_dir, (data.train_dir, data.test_dir))
    log.info("ingest: %d files in %d classes %s", len(scan.files), len(scan.classes), scan.classes)
    inspect = partial(_inspect, min_side=data.min_side, max_pixels=data.max_pixels)
    results = map_in_processes(inspect, [p for _, _, p in scan.files], data.workers)

    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, str]] = []
    for (split, cls, path), res in zip(scan.files, results, strict=True):
        rel = path.relative_to(in_dir).as_posix()
        if res["ok"]:
            rows.append(
                {"path": rel, "class": cls, "split": split, "sha256": res["sha256"],
                 "width": res["width"], "height": res["height"]}
            )
        else:
            rejected.append(
                {"path": rel, "class": cls, "split": split, "reason": res["reason"],
                 "detail": res["detail"]}
            )
            log.warning("ingest: rejected %s: %s %s", rel, res["reason"], res["detail"])

    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(row["split"], {c: 0 for c in scan.classes})[row["class"]] += 1
    total = len(scan.files)
    report = {
        "dataset": in_dir.name,
        "classes": scan.classes,
        "splits": {"train": data.train_dir, "test": data.test_dir},
        "n_files": total,
        "n_accepted": len(rows),
        "n_rejected": len(rejected),
        "n_ignored": len(scan.ignored),
        "counts": counts,
        "rejected_reasons": dict(Counter(r["reason"] for r in rejected)),
        "rejected": rejected,
        "ignored": scan.ignored,
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=INDEX_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    index_path, report_path = out_dir / "index.csv", out_dir / "report.json"
    write_text(index_path, buf.getvalue())
    write_json(report_path, report)

    if total and len(rejected) / total > data.max_rejected_fraction:
        raise IngestError(
            f"{in_dir}: {len(rejected)} of {total} files rejected "
            f"({len(rejected) / total:.1%} > data.max_rejected_fraction="
            f"{data.max_rejected_fraction:.1%}); see {report_path} for each file and reason"
        )
    log.info("ingest: %d accepted, %d rejected, %d ignored", len(rows), len(rejected),
             len(scan.ignored))
    return IngestResult(scan.classes, len(rows), len(rejected), len(scan.ignored), index_path,
                        report_path)


def read_index(index_path: Path) -> list[dict[str, str]]:
    """Read the index written by :func:`run`."""
    with index_path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
