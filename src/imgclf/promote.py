"""promote: move ``@champion`` to a candidate version only when it is measurably better.

Both the candidate (default ``@challenger``) and the current ``@champion`` are measured here,
now, on the same test tensors and leak flags from preprocess (:mod:`imgclf.measure`). Both
versions must carry the ``data_md5`` that ``data.dvc`` pins, so a number measured on other data
can never win. The candidate must pass the absolute floors (``promote.min_accuracy``,
``promote.min_leakfree_accuracy``) and beat the champion's ``promote.metric`` by at least
``promote.min_margin``. ``force`` (with a reason) overrides a refusal, and says so in the record.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf import registry, tracking
from imgclf.artifacts import PreprocessOutputs
from imgclf.config import Config
from imgclf.errors import PromotionError
from imgclf.measure import SHOWN_METRICS, Measured, measure, test_file_preparer
from imgclf.tracking import VersionInfo

log = logging.getLogger(__name__)


@dataclass
class PromotionResult:
    accepted: bool
    forced: bool
    candidate: Measured
    champion: Measured | None
    reasons: list[str]
    data_md5: str
    move: registry.Move | None = None


def stale_test_data(project: Path, stage: str = "preprocess") -> str | None:
    """Why ``stage``'s outputs may not be built from the data ``data.dvc`` pins (None: fine).

    ``data.dvc`` hashes the whole ``data/`` folder while the stages depend on
    ``data/id-cards``, so the hashes cannot be compared directly: ``dvc status`` compares each
    with the workspace instead. Only data changes count here (a code change is not a different
    test set). Outside a DVC project, or without the ``dvc`` command, nothing is checked.
    """
    import shutil
    import subprocess
    import sys

    exe = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    if not (project / "dvc.yaml").is_file() or not Path(exe).exists():
        return None
    proc = subprocess.run(
        [exe, "status", "--json", "data.dvc", stage],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        status = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        return f"`dvc status` failed: {proc.stderr.strip()[-300:]}"
    changed = []
    for name, entries in status.items():
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            for kind in ("changed outs", "changed deps"):
                changed += [
                    f"{name}: {path} {how}"
                    for path, how in (entry.get(kind) or {}).items()
                    if name == "data.dvc" or str(path).startswith("data")
                ]
    if changed:
        return "; ".join(changed)
    return None


def judge(cfg: Config, cand: Measured, champ: Measured | None, data_md5: str) -> list[str]:
    """Why the candidate may not become champion (empty: it may). Pure: tests call it."""
    p = cfg.promote
    reasons: list[str] = []
    if data_md5 == "unknown":
        reasons.append("data.dvc not found: no pinned test set to compare on")
    for who, m in (("candidate", cand), ("champion", champ)):
        if m is None:
            continue
        if m.data_md5 != data_md5:
            reasons.append(
                f"{who} v{m.version} was trained on data {m.data_md5[:12]}, "
                f"not the {data_md5[:12]} that data.dvc pins"
            )
        if m.problem:
            reasons.append(f"{who} v{m.version}: {m.problem}")
    if cand.problem:
        return reasons
    acc, lf = cand.metrics.get("accuracy"), cand.metrics.get("leakfree_accuracy")
    if acc is None or acc < p.min_accuracy:
        reasons.append(f"accuracy {_f(acc)} is below the floor {p.min_accuracy:.4f}")
    if lf is None or lf < p.min_leakfree_accuracy:
        reasons.append(
            f"leakfree_accuracy {_f(lf)} is below the floor {p.min_leakfree_accuracy:.4f}"
        )
    if champ is not None and not champ.problem:
        c, k = cand.metrics.get(p.metric), champ.metrics.get(p.metric)
        # A tie is not evidence: the candidate must be strictly better, by the margin at least.
        if c is None or k is None or c <= k or c - k < p.min_margin - 1e-12:
            reasons.append(
                f"{p.metric} {_f(c)} does not beat the champion's {_f(k)} by "
                f"at least {p.min_margin:.4f}"
            )
    return reasons


def run(
    cfg: Config,
    *,
    preprocess_dir: Path,
    data_md5: str,
    data_dir: Path | None = None,
    version: str | None = None,
    force: bool = False,
    reason: str = "",
) -> PromotionResult:
    """Measure candidate and champion, and move ``@champion`` if the gate (or ``force``) allows.

    ``data_dir`` (the folder preprocess's split paths are relative to) lets a version trained on
    another input size or ``data.fit`` be measured on the same files prepared its way.

    Raises:
        PromotionError: no candidate, ``force`` without a reason, or the candidate is already
            the champion.
    """
    if force and not reason.strip():
        raise PromotionError('--force needs --reason "...": the reason is recorded')
    name = cfg.mlflow.registered_model_name
    tracking.configure()
    try:
        cand_info = (
            tracking.get_version(name, version=version)
            if version is not None
            else tracking.get_version(name, alias=cfg.export.challenger_alias)
        )
    except LookupError as exc:
        raise PromotionError(str(exc)) from exc
    try:
        champ_info: VersionInfo | None = tracking.get_version(name, alias=cfg.export.champion_alias)
    except LookupError:
        champ_info = None
    if champ_info is not None and champ_info.version == cand_info.version:
        raise PromotionError(
            f"{name} version {cand_info.version} is already @{cfg.export.champion_alias}"
        )

    pre = PreprocessOutputs(preprocess_dir)
    x = pre.reader().subset("test")  # read batch by batch as measure() predicts
    y = x.labels
    if len(y) == 0:
        raise PromotionError(f"{preprocess_dir}: the test set is empty")
    kw: dict[str, Any] = {
        "x": x,
        "y": y,
        "leak": pre.read_leak_flags(len(y)),
        "classes": pre.read_classes(),
        "fit": pre.read_fit(),
        "prepare": test_file_preparer(preprocess_dir, data_dir) if data_dir else None,
    }
    cand = measure(cand_info, cfg, **kw)
    champ = measure(champ_info, cfg, **kw) if champ_info is not None else None
    reasons = judge(cfg, cand, champ, data_md5)
    result = PromotionResult(not reasons, False, cand, champ, reasons, data_md5)
    if reasons and not force:
        log.warning("promote: refused v%s: %s", cand.version, "; ".join(reasons))
        return result
    result.accepted, result.forced = True, bool(reasons)
    record = {
        "metric": cfg.promote.metric,
        "candidate": cand.metrics,
        "champion": champ.metrics if champ else None,
        "data_md5": data_md5,
        "gate": {
            "min_accuracy": cfg.promote.min_accuracy,
            "min_leakfree_accuracy": cfg.promote.min_leakfree_accuracy,
            "min_margin": cfg.promote.min_margin,
            "format": cfg.promote.format,
        },
        "refusals_overridden": reasons,
        "prepared": {m.version: m.prepared for m in (cand, champ) if m is not None and m.prepared},
    }
    # The metrics compared are in the record (and shown by `imgclf registry`).
    why = reason.strip() or "passed the gate"
    result.move = registry.move_alias(
        name,
        cfg.export.champion_alias,
        cand.version,
        reason=why,
        forced=result.forced,
        metrics=record,
    )
    return result


def render(result: PromotionResult, cfg: Config) -> str:
    """The side-by-side table ``imgclf promote`` prints, then the decision and its reasons."""
    p = cfg.promote
    champ = result.champion
    rows = [
        (
            "",
            f"candidate v{result.candidate.version}",
            f"champion v{champ.version}" if champ else "champion (none)",
            "required",
        )
    ]
    for key in SHOWN_METRICS:
        need = ""
        if key == "accuracy":
            need = f">= {p.min_accuracy:.4f}"
        elif key == "leakfree_accuracy":
            need = f">= {p.min_leakfree_accuracy:.4f}"
        if key == p.metric:
            need += (", " if need else "") + f">= champion + {p.min_margin:.4f}"
        rows.append(
            (
                key,
                _f(result.candidate.metrics.get(key)),
                _f(champ.metrics.get(key)) if champ else "-",
                need,
            )
        )
    rows.append(
        (
            "data_md5",
            result.candidate.data_md5[:12],
            champ.data_md5[:12] if champ else "-",
            f"= {result.data_md5[:12]} (data.dvc)",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if result.accepted and not result.forced:
        lines.append(f"ACCEPTED: @{cfg.export.champion_alias} -> v{result.candidate.version}")
    elif result.forced:
        lines.append(
            f"FORCED: @{cfg.export.champion_alias} -> v{result.candidate.version} "
            f"despite: {'; '.join(result.reasons)}"
        )
    else:
        lines.append("REFUSED: " + "; ".join(result.reasons))
    for m in (result.candidate, champ):
        if m is not None and m.prepared:
            lines.append(f"v{m.version} was measured on the test files prepared {m.prepared}")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
