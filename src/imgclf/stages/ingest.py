"""ingest: validate the folder-per-class dataset, index it, and write its dataset card.

Every file is decoded once (:mod:`imgclf.validate`): rejected files are listed with a reason
code, exact and near duplicates and train/test leakage are found, and the result goes to
``out_dir`` as DVC outputs and to a dedicated MLflow run (``run_name="ingest"``, tagged with
the data hash) in its own experiment, ``<mlflow.experiment_name>-data``: the training
experiment's runs table and charts then hold training runs only, and the data's history is one
click away.

Outputs: :class:`imgclf.artifacts.IngestOutputs` (the index of accepted files, the report,
the leakage details, the dataset card with its figures, and the ingest run's id).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf import plots
from imgclf.artifacts import IngestOutputs
from imgclf.config import Config
from imgclf.errors import IngestError
from imgclf.fileio import write_json, write_text
from imgclf.images import ImageRejected, load_resized
from imgclf.validate import Validation, render_card, validate_dataset

log = logging.getLogger(__name__)

SAMPLES_PER_CLASS = 6
DATA_EXPERIMENT_SUFFIX = "-data"


def data_experiment(training_experiment: str) -> str:
    """The experiment that holds ingest's runs, beside (never inside) the training one."""
    return training_experiment + DATA_EXPERIMENT_SUFFIX


@dataclass
class IngestResult:
    classes: list[str]
    n_accepted: int
    n_rejected: int
    n_ignored: int
    index_path: Path
    report_path: Path
    n_leaky_test: int = 0
    exact_groups_across_splits: int = 0
    run_id: str | None = None


def write_card(v: Validation, out: IngestOutputs, thumb: tuple[int, int] = (64, 96)) -> list[Path]:
    """Write the dataset card and its figures into ``out``; return the files."""
    plots.class_counts(v.report["counts"], out.class_counts_png)
    samples, labels = [], []
    for k, cls in enumerate(v.classes):
        picked = [r for r in v.rows if r["class"] == cls and r["split"] == v.splits[0]]
        for r in picked[:SAMPLES_PER_CLASS]:
            try:
                samples.append(load_resized(v.root / r["path"], *thumb))
                labels.append(k)
            except ImageRejected:  # changed on disk since validation: leave the cell empty
                continue
    images = np.stack(samples) if samples else np.zeros((0, *thumb, 3), np.uint8)
    plots.sample_grid(images, labels, v.classes, out.sample_grid_png, SAMPLES_PER_CLASS)
    plots.image_sizes(
        {s: [(r["width"], r["height"]) for r in v.rows if r["split"] == s] for s in v.splits},
        out.image_sizes_png,
    )
    write_text(out.card, render_card(v, [f.name for f in out.card_figures]))
    return [out.card, *out.card_figures]


def run(cfg: Config, *, in_dir: Path, out_dir: Path, track: bool = True) -> IngestResult:
    """Validate and index the dataset under ``in_dir`` into ``out_dir``.

    Raises:
        DatasetError: the layout is unusable.
        IngestError: a configured limit is passed (the outputs are still written, and the
            MLflow run ends FAILED, so the reasons can be read).
    """
    data = cfg.data
    v = validate_dataset(in_dir, data, (data.train_dir, data.test_dir))
    for r in v.rejected:
        log.warning("ingest: rejected %s: %s %s", r["path"], r["reason"], r["detail"])
    summary = v.duplicates["summary"]

    out = IngestOutputs(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out.write_index(v.rows)
    write_json(out.report, v.report)
    write_json(out.leakage, v.duplicates)
    files = [out.index, out.report, out.leakage, *write_card(v, out)]
    log.info(
        "ingest: %d accepted, %d rejected, %d ignored; %d exact groups across splits, %d of %d "
        "test files leak (dHash distance <= %d)",
        len(v.rows),
        len(v.rejected),
        len(v.ignored),
        summary["exact_groups_across_splits"],
        summary["leaky_test_files"],
        summary["n_test"],
        data.near_dup_distance,
    )

    run_id = None
    if track:
        run_id = _track(cfg, v, out, files)  # raises inside the run, so it ends FAILED
    else:
        check_limits(v, out.report)
    return IngestResult(
        v.classes,
        len(v.rows),
        len(v.rejected),
        len(v.ignored),
        out.index,
        out.report,
        summary["leaky_test_files"],
        summary["exact_groups_across_splits"],
        run_id,
    )


def _track(cfg: Config, v: Validation, out: IngestOutputs, files: list[Path]) -> str:
    """Log the validation to a dedicated MLflow run; fail it when a limit is passed."""
    from imgclf import tracking
    from imgclf.config import flatten
    from imgclf.lineage import lineage_tags

    s = v.duplicates["summary"]
    metrics = {
        k: s[k]
        for k in (
            "exact_groups",
            "exact_groups_across_splits",
            "near_pairs",
            "cut_pairs",
            "label_conflicts",
            "leaky_test_files",
            "leaky_test_files_exact",
            "leakfree_test_files",
        )
    }
    metrics |= {
        "n_files": v.report["n_files"],
        "n_rejected": v.report["n_rejected"],
        "n_ignored": v.report["n_ignored"],
    }
    tags = {**lineage_tags(), "imgclf.stage": "ingest"}
    experiment = data_experiment(cfg.mlflow.experiment_name)
    with tracking.open_run(experiment, "ingest", tags=tags) as run_id:
        tracking.log_params(flatten(cfg, ("data",)))
        tracking.log_metrics(metrics)
        for f in files:
            tracking.log_artifact(f, "ingest")
        tracking.log_text(card_html(out), "ingest/dataset_card.html")
        out.write_run_id(run_id)
        check_limits(v, out.report)
    return run_id


def card_html(out: IngestOutputs) -> str:
    """The dataset card as one HTML page with its figures inlined.

    MLflow shows a ``.md`` artifact as plain text (its ``![..](..)`` figure links stay raw) but
    renders an ``.html`` one, and an artifact page cannot fetch its sibling files: so the
    figures travel inside the page.
    """
    import base64
    import html

    from markdown_it import MarkdownIt  # rich's (hence mlflow's) markdown parser

    body = MarkdownIt("commonmark").enable("table").render(out.card.read_text(encoding="utf-8"))
    for fig in out.card_figures:
        data = base64.b64encode(fig.read_bytes()).decode("ascii")
        body = body.replace(f'src="{html.escape(fig.name)}"', f'src="data:image/png;base64,{data}"')
    style = "body{font-family:sans-serif;max-width:60em}img{max-width:100%}td,th{padding:0 .6em}"
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{style}</style></head>" + (
        f"<body>{body}</body></html>"
    )


def check_limits(v: Validation, report_path: Path) -> None:
    """Raise :class:`IngestError` when the dataset is not usable."""
    if v.problems:
        raise IngestError("; ".join(v.problems) + f"; see {report_path}")
