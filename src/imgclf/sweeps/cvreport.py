"""``imgclf cv-report``: cross-validated runs of one recipe under other seeds, scored as one.

A CV job logs ``cv/predictions.csv``: every pooled file's out-of-fold prediction with its fold,
its near-duplicate group, the training seed and every class's probability. Jobs of the same
recipe on the same folds under other ``train.seed`` values (run apart, for example side by side
with ``train.threads=1``) hold what ``cv.repeats`` would have trained in one job. This scores
them together with the same :func:`imgclf.cv.summarize`, so the mean and its interval cover the
seed, and adds what only several seeds show: the files every seed gets wrong, and the
ensemble (the seeds' probabilities averaged per file, scored on the same folds).

Runs given by id must have logged the same params but for the seeds (and threads); files carry
no params, so for them that is the user's word.
"""

from __future__ import annotations

import csv
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf import cv
from imgclf.artifacts import CVOutputs
from imgclf.config import ConfigError
from imgclf.errors import MissingInputError

NEEDED = ("path", "actual", "predicted", "fold", "group")
DEFAULT_BOOTSTRAP_SEED = 42  # cv.seed's default
SEED_ONLY = {"train.seed", "cv.repeats", "train.threads"}  # params that leave the recipe alike
RUN_ID = re.compile(r"[a-zA-Z0-9][\w\-]{0,255}")


@dataclass(frozen=True)
class Repeat:
    """One training seed's out-of-fold predictions, in the pool's file order."""

    source: str  # the file or run id it was read from
    seed: str  # "?" for a file written before predictions carried the seed
    paths: tuple[str, ...]
    y: np.ndarray
    fold: np.ndarray
    group: np.ndarray
    pred: np.ndarray  # the job's own prediction (its full-precision argmax)
    proba: np.ndarray  # files x classes, as written: 4 decimals (for the ensemble only)


@dataclass(frozen=True)
class Report:
    classes: list[str]
    repeats: list[Repeat]
    each: list[dict[str, float]]  # cv.summarize of every repeat alone
    together: dict[str, float]  # ... of all of them as one repeated CV
    ensemble: dict[str, float]  # ... of the mean of their probabilities
    errors: list[int]  # each repeat's wrong files, counted
    ensemble_errors: int
    wrong_every: list[str]  # files every repeat gets wrong
    wrong_some: int  # files at least one repeat gets wrong


@dataclass(frozen=True)
class Source:
    name: str  # as the report shows it
    path: Path  # the local predictions file
    seed: str = "?"  # the run's train.seed, for a file without a seed column
    params: dict[str, str] | None = None  # a run's params; a file has none


def read_source(source: str, work: Path) -> Source:
    """``source`` as a local predictions file: itself if it is a file, the ``predictions.csv``
    in it if it is a folder, else the ``cv/predictions.csv`` of the run with that id in the
    tracking store."""
    from imgclf import tracking

    path = Path(source)
    if path.is_dir():  # the cv/ folder of a downloaded run
        path = CVOutputs(path).predictions
    if path.is_file():
        return Source(source, path)
    if not RUN_ID.fullmatch(source):  # MLflow's own rule for a run id
        raise MissingInputError(
            f"{source}: no such file; give a cv/predictions.csv or the run id of a "
            "cross-validated job"
        )
    tracking.configure()
    params = tracking.run_params(source)  # one read of the run: it exists, and its recipe
    if params is None:
        raise MissingInputError(
            f"{source}: neither a file nor a run in {tracking.tracking_uri()}; give a "
            "cv/predictions.csv or the run id of a cross-validated job"
        )
    rel = f"{CVOutputs.STAGE}/{CVOutputs.predictions.name}"
    try:
        local = tracking.download_run_file(source, rel, work / source)
    except FileNotFoundError as exc:
        raise MissingInputError(
            f"run {source} has no {rel}: it is not a cross-validated job "
            "(`imgclf-train cv=grouped5 ...` logs one)"
        ) from exc
    return Source(f"run {source}", local, params.get("train.seed", "?"), params)


def load(src: Source) -> tuple[list[str], list[Repeat]]:
    """The classes and the repeats (one per training seed) of one predictions file."""
    source = src.name
    with open(src.path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = list(reader)
    classes = [h.removeprefix("p_") for h in header if h.startswith("p_")]
    missing = [c for c in NEEDED if c not in header] or ([] if classes else ["p_<class>"])
    if missing:
        raise ConfigError(
            f"{source}: not a CV predictions file (no column {', '.join(missing)}); give a "
            "cv/predictions.csv or the run id of a cross-validated job"
        )
    index = {c: i for i, c in enumerate(classes)}
    by_seed: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_seed.setdefault(row.get("seed") or src.seed, []).append(row)
    repeats = []
    # In seed order, as cv.summarize orders a job's repeats: the same bootstrap draws.
    for seed, part in sorted(by_seed.items(), key=lambda kv: _seed_order(kv[0])):
        part.sort(key=lambda r: r["path"])
        paths = tuple(r["path"] for r in part)
        if len(set(paths)) != len(paths):
            raise ConfigError(f"{source}: a file is predicted twice under seed {seed}")
        try:
            repeats.append(
                Repeat(
                    source=source,
                    seed=seed,
                    paths=paths,
                    y=np.array([index[r["actual"]] for r in part]),
                    fold=np.array([int(r["fold"]) for r in part]),
                    group=np.array([int(r["group"]) for r in part]),
                    pred=np.array([index[r["predicted"]] for r in part]),
                    proba=np.array([[float(r[f"p_{c}"]) for c in classes] for r in part]),
                )
            )
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{source}: unreadable row ({exc}); the file is damaged") from exc
    return classes, repeats


def _seed_order(seed: str) -> tuple[int, int | str]:
    return (0, int(seed)) if seed.lstrip("-").isdigit() else (1, seed)


def check_same_folds(repeats: Sequence[Repeat]) -> None:
    """Every repeat must hold the same files in the same folds and groups."""
    first = repeats[0]
    seen: dict[str, str] = {}
    for r in repeats:
        name = f"{r.source} (seed {r.seed})"
        if r.seed != "?" and r.seed in seen:
            raise ConfigError(
                f"{name}: seed {r.seed} is also in {seen[r.seed]}; one training counted twice "
                "narrows the interval: give runs with different train.seed"
            )
        seen[r.seed] = r.source
        same = (
            r.paths == first.paths
            and np.array_equal(r.fold, first.fold)
            and np.array_equal(r.group, first.group)
            and np.array_equal(r.y, first.y)
        )
        if not same:
            raise ConfigError(
                f"{name}: other files, folds or groups than {first.source} (seed "
                f"{first.seed}); runs scored together need the same data, cv.pool, cv.folds "
                "and cv.seed"
            )


def check_same_recipe(sources: Sequence[Source]) -> None:
    """Runs must have trained the same recipe: every param alike but those that only say
    which seeds, or how many threads, trained it. Files carry no params: not checked."""
    runs = [s for s in sources if s.params is not None]
    for run in runs[1:]:
        first, other = runs[0].params or {}, run.params or {}
        differ = sorted(
            k for k in first.keys() | other.keys()
            if k not in SEED_ONLY and first.get(k) != other.get(k)
        )  # fmt: skip
        if differ:
            shown = ", ".join(f"{k} {first.get(k)} vs {other.get(k)}" for k in differ[:3])
            raise ConfigError(
                f"{run.name}: another recipe than {runs[0].name} ({shown}); jobs scored "
                "together must differ only in train.seed"
            )


def report(sources: Sequence[Source], bootstrap_seed: int = DEFAULT_BOOTSTRAP_SEED) -> Report:
    """Score the predictions files ``sources`` as one repeated CV."""
    check_same_recipe(sources)
    classes: list[str] | None = None
    repeats: list[Repeat] = []
    for src in sources:
        names, found = load(src)
        if classes is not None and names != classes:
            raise ConfigError(f"{src.name}: classes {names}, not {classes} as in {sources[0].name}")
        classes = names
        repeats += found
    if not repeats or classes is None:
        raise ConfigError("no predictions to score: the files are empty")
    check_same_folds(repeats)
    first = repeats[0]

    def summary(y_pred: np.ndarray, repeat_of: np.ndarray | None = None) -> dict[str, float]:
        n = len(y_pred) // len(first.y)
        return cv.summarize(
            np.tile(first.y, n),
            y_pred,
            np.tile(first.fold, n),
            np.tile(first.group, n),
            classes,
            repeat_of=repeat_of,
            seed=bootstrap_seed,
        )

    preds = [r.pred for r in repeats]
    mean_proba = np.mean([r.proba for r in repeats], axis=0).argmax(axis=1)
    wrong = np.array([p != first.y for p in preds])
    together = summary(np.concatenate(preds), np.repeat(np.arange(len(repeats)), len(first.y)))
    return Report(
        classes=classes,
        repeats=repeats,
        each=[summary(p) for p in preds],
        together=together,
        ensemble=summary(mean_proba),
        errors=[int(w.sum()) for w in wrong],
        ensemble_errors=int((mean_proba != first.y).sum()),
        wrong_every=[first.paths[i] for i in np.flatnonzero(wrong.all(axis=0))],
        wrong_some=int(wrong.any(axis=0).sum()),
    )


def _cell(s: dict[str, float]) -> str:
    return (
        f"{100 * s['cv_accuracy']:.1f} % "
        f"[{100 * s['cv_accuracy_ci95_low']:.1f}, {100 * s['cv_accuracy_ci95_high']:.1f}]"
    )


def render(r: Report) -> str:
    """The report as text: a line per seed, the seeds together, the files they share."""
    n, k = len(r.repeats[0].y), int(r.together["cv_folds"])
    width = max(len(x.source) for x in r.repeats)
    lines = [
        f"{n} files, {k} grouped folds, {len(r.repeats)} training seeds",
        f"{'source':<{width}}  seed  errors  accuracy [95 % interval]",
    ]
    lines += [
        f"{x.source:<{width}}  {x.seed:>4}  {e:>6}  {_cell(s)}"
        for x, e, s in zip(r.repeats, r.errors, r.each, strict=True)
    ]
    mean_errors = np.mean(r.errors)
    t = r.together
    line = f"{'together':<{width}}  {'':>4}  {mean_errors:>6.1f}  {_cell(t)}"
    if len(r.repeats) > 1:
        line += (
            f"; spread {100 * t['cv_accuracy_seed_std']:.1f} points over seeds, "
            f"{100 * t['cv_accuracy_std']:.1f} over folds (standard deviations)"
        )
    lines.append(line)
    lines += [
        f"{'ensemble':<{width}}  {'':>4}  {r.ensemble_errors:>6}  {_cell(r.ensemble)} "
        "(the seeds' probabilities averaged per file)",
        f"wrong under every seed: {len(r.wrong_every)}; under at least one: {r.wrong_some}",
        *(f"  {p}" for p in r.wrong_every),
    ]
    return "\n".join(lines)


def as_json(r: Report) -> dict[str, object]:
    return {
        "classes": r.classes,
        "repeats": [
            {"source": x.source, "seed": x.seed, "errors": e, **s}
            for x, e, s in zip(r.repeats, r.errors, r.each, strict=True)
        ],
        "together": r.together,
        "ensemble": r.ensemble | {"errors": r.ensemble_errors},
        "wrong_every": r.wrong_every,
        "wrong_some": r.wrong_some,
    }


def run(sources: Sequence[str], bootstrap_seed: int | None = None) -> Report:
    """Read every source (a predictions file or a run id) and score them together; the
    bootstrap's seed is the first run's ``cv.seed`` (as the job drew it), else 42."""
    with tempfile.TemporaryDirectory(prefix="imgclf-cv-report-") as tmp:
        read = [read_source(s, Path(tmp)) for s in sources]
        if bootstrap_seed is None:
            logged = [s.params["cv.seed"] for s in read if s.params and "cv.seed" in s.params]
            bootstrap_seed = int(logged[0]) if logged else DEFAULT_BOOTSTRAP_SEED
        return report(read, bootstrap_seed)  # reads the downloaded files: inside the folder
