"""The model card of a registered version: what a user needs to trust, pick or reject it.

MLflow has no model card (mlflow issue 3613), but it renders a version's description as
markdown on the version's page. Export writes the card there (:func:`publish`), so the registry
page shows it, and ``imgclf registry --card VERSION`` prints the same text (:func:`read`).

The card says what the model was trained on (the data hash, class counts, the test set's
leakage), how it was chosen, the test and leak-free metrics with their 95 % intervals, the
per-class scores, the parity of each exported format, what kind of version it is (a smoke test,
an experiment or a release), its intended use and its known limits. Everything comes from the
stage outputs export already reads and from the version's lineage tags: the card is a view, it
measures nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imgclf.artifacts import PreprocessOutputs, TrainOutputs
from imgclf.config import Config

KIND_TAG = "kind"
# Fewer epochs than this is a smoke test (e.g. `dvc exp run -S train.epochs=3`), whatever else.
SMOKE_MAX_EPOCHS = 9


def version_kind(epochs_run: int, lineage: Mapping[str, str]) -> str:
    """``smoke`` (a few epochs), ``experiment`` (``dvc exp run`` or uncommitted code) or
    ``release`` (``dvc repro`` of a clean commit)."""
    if epochs_run <= SMOKE_MAX_EPOCHS:
        return "smoke"
    if lineage.get("dvc_exp_name") or lineage.get("git_commit", "").endswith("-dirty"):
        return "experiment"
    return "release"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _interval(metrics: Mapping[str, Any], key: str) -> str:
    low, high = metrics.get(f"{key}_ci95_low"), metrics.get(f"{key}_ci95_high")
    if low is None or high is None:
        return "n/a"
    return f"{_pct(low)} – {_pct(high)}"


def render(
    *,
    name: str,
    version: str,
    kind: str,
    lineage: Mapping[str, str],
    params: Mapping[str, Any],
    counts: Mapping[str, Mapping[str, int]],
    train_summary: Mapping[str, Any],
    metrics: Mapping[str, Any],
    parity: Mapping[str, Mapping[str, Any]],
    input_spec: Mapping[str, Any],
) -> str:
    """The card as markdown (pure: every value is an argument)."""
    classes = sorted({c for per in counts.values() for c in per})
    n_test, n_free = int(metrics.get("n_test", 0)), int(metrics.get("n_leakfree", 0))
    lines = [
        f"# {name} v{version} — {kind}",
        "",
        _KIND_LINES[kind],
        "",
        "## Headline (test set)",
        "",
        "| metric | value | 95 % interval | images |",
        "|---|---|---|---|",
        f"| **leak-free accuracy** | **{_pct(metrics.get('leakfree_accuracy'))}** "
        f"| {_interval(metrics, 'leakfree_accuracy')} | {n_free} |",
        f"| accuracy (all test images) | {_pct(metrics.get('accuracy'))} "
        f"| {_interval(metrics, 'accuracy')} | {n_test} |",
        f"| macro F1 / leak-free macro F1 | {metrics.get('macro_f1', 0):.3f} / "
        f"{metrics.get('leakfree_macro_f1') or 0:.3f} | | |",
        "",
        f"The test set leaks: {n_test - n_free} of its {n_test} images have an exact or near "
        "twin in the training data, so *accuracy* is partly memorisation; the leak-free "
        "accuracy, on the others only, is the honest number and the one promotion compares.",
        "",
        "## Per class (all test images)",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for cls, m in sorted(metrics.get("per_class", {}).items()):
        lines.append(
            f"| {cls} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} "
            f"| {m.get('support', '')} |"
        )
    lines += [
        "",
        "## Trained on",
        "",
        f"- data: `data.dvc` md5 `{lineage.get('data_md5', 'unknown')}`, code "
        f"`{lineage.get('git_commit', 'unknown')[:12]}`"
        + (f", DVC experiment `{lineage['dvc_exp_name']}`" if lineage.get("dvc_exp_name") else ""),
        "- images per class: "
        + "; ".join(
            f"{subset} " + ", ".join(f"{c} {per.get(c, 0)}" for c in classes)
            for subset, per in counts.items()
        ),
        f"- input: {input_spec.get('image_height')}×{input_spec.get('image_width')} RGB, "
        f"`data.fit: {input_spec.get('fit')}`; the model takes raw uint8 pixels",
        "",
        "## How it was chosen",
        "",
        _how_chosen(params, train_summary),
        "",
        "## Export formats (each checked against Keras on real test images)",
        "",
        "| format | valid | label agreement | max prob. difference | images |",
        "|---|---|---|---|---|",
    ]
    for fmt, p in parity.items():
        valid = "yes" if p.get("valid") else f"**no**: {p.get('reason', '')}"
        lines.append(
            f"| {fmt} | {valid} | {p.get('label_agreement', 0):.4f} "
            f"| {p.get('max_abs_diff', float('nan')):.2g} | {p.get('n_images', '')} |"
        )
    lines += ["", "## Intended use", "", INTENDED_USE, "", "## Known limits", "", KNOWN_LIMITS]
    return "\n".join(lines) + "\n"


_KIND_LINES = {
    "smoke": "**Smoke test**: trained for a few epochs to check the pipeline runs. "
    "Not a candidate for serving.",
    "experiment": "**Experiment**: from `dvc exp run` or uncommitted code. Compare it; promote "
    "it only after its recipe is committed and rerun with `dvc repro`.",
    "release": "**Release candidate**: `dvc repro` of a clean commit. `imgclf promote` decides "
    "whether it replaces `@champion`.",
}

INTENDED_USE = (
    "Sorting scanned or photographed document images into the classes above, as a first "
    "routing step with a person checking uncertain answers (`imgclf predict` flags them). "
    "Not for identity verification, fraud detection or any decision about a person."
)
KNOWN_LIMITS = (
    "- Trained on a few hundred images of one dataset: documents from other countries, "
    "layouts or capture devices may be misclassified with high confidence.\n"
    "- Every input gets one of the known classes (`others` is the catch-all); there is no "
    "out-of-distribution rejection beyond the confidence rule.\n"
    "- Test metrics come from a test set that shares images with training (see above); the "
    "leak-free subset is small, hence its wide interval.\n"
    "- Format parity is checked on a sample of test images, not on every possible input."
)


def _how_chosen(params: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    recipe = ", ".join(
        f"{k} {params[k]}"
        for k in (
            "model.name",
            "model.filters",
            "optimizer.name",
            "optimizer.learning_rate",
            "train.epochs",
            "train.batch_size",
        )
        if k in params
    )
    if summary.get("refit"):
        how = (
            f"The recipe ({recipe}) was chosen on the validation split (sweeps never see the "
            f"test set); this model was then refit on train + validation "
            f"({summary.get('n_train')} images) for {summary.get('epochs_run')} epochs, "
            "keeping the last."
        )
    else:
        how = (
            f"Recipe: {recipe}. Trained on {summary.get('n_train')} images with early stopping "
            f"on `{params.get('train.monitor', 'val_loss')}`; kept epoch "
            f"{summary.get('best_epoch')} of {summary.get('epochs_run')} (validation accuracy "
            f"{_pct(summary.get('val_accuracy'))} on {summary.get('n_val')} images)."
        )
    return how + " Nothing about it was chosen on the test set."


def build(
    cfg: Config,
    *,
    name: str,
    version: str,
    lineage: Mapping[str, str],
    pre: PreprocessOutputs,
    train_out: TrainOutputs,
    metrics: Mapping[str, Any],
    parity_path: Path,
) -> tuple[str, str]:
    """The card of a version from the stage outputs export reads; returns (kind, markdown)."""
    from imgclf.config import flatten

    summary = json.loads(train_out.summary.read_text(encoding="utf-8"))
    kind = version_kind(int(summary.get("epochs_run", 0)), lineage)
    text = render(
        name=name,
        version=version,
        kind=kind,
        lineage=lineage,
        params=flatten(cfg, ("model", "optimizer", "train")),
        counts=json.loads(pre.counts.read_text(encoding="utf-8")),
        train_summary=summary,
        metrics=metrics,
        parity=json.loads(parity_path.read_text(encoding="utf-8")),
        input_spec=pre.read_input_spec(),
    )
    return kind, text


def publish(
    cfg: Config,
    name: str,
    version: str,
    pre: PreprocessOutputs,
    train_out: TrainOutputs,
    metrics: Mapping[str, Any],
    parity_path: Path,
) -> str:
    """Write the card as ``version``'s description and tag its kind; return the card.

    The lineage is read from the version itself, so a reused version keeps its own.
    """
    from imgclf import tracking
    from imgclf.tracking.registry import set_version_description

    info = tracking.get_version(name, version)
    kind, text = build(
        cfg,
        name=name,
        version=version,
        lineage=info.tags,
        pre=pre,
        train_out=train_out,
        metrics=metrics,
        parity_path=parity_path,
    )
    set_version_description(name, version, text)
    if info.tags.get(KIND_TAG) != kind:
        tracking.set_version_tags(name, version, {KIND_TAG: kind})
    return text


def summary_table(metrics: Mapping[str, Any], train_summary: Mapping[str, Any]) -> str:
    """The few numbers that decide a comparison, as a short plain-text table (``make repro``'s
    last lines, ``imgclf summary``)."""
    rows = [
        ("leak-free accuracy", "leakfree_accuracy", int(metrics.get("n_leakfree", 0))),
        ("accuracy", "accuracy", int(metrics.get("n_test", 0))),
    ]
    lines = [f"{'metric':<20} {'value':>7}  {'95 % interval':<17} images"]
    for label, key, n in rows:
        low, high = metrics.get(f"{key}_ci95_low"), metrics.get(f"{key}_ci95_high")
        ci = "n/a" if low is None or high is None else f"{low:.3f} - {high:.3f}"
        value = metrics.get(key)
        shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(f"{label:<20} {shown:>7}  {ci:<17} {n}")
    for label, key in (("macro F1", "macro_f1"), ("leak-free macro F1", "leakfree_macro_f1")):
        value = metrics.get(key)
        lines.append(f"{label:<20} {'n/a' if value is None else f'{value:.3f}':>7}")
    epochs = f"{train_summary.get('best_epoch')}/{train_summary.get('epochs_run')}"
    how = "refit on train + val" if train_summary.get("refit") else "early stopping"
    lines.append(f"{'epochs kept/run':<20} {epochs:>7}  {how}")
    return "\n".join(lines)


def read(name: str, version: str) -> str:
    """A version's card (its description); '' for a version registered before cards existed."""
    from imgclf.tracking.registry import version_description

    return version_description(name, version)
