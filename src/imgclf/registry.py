"""The model registry as imgclf uses it: aliases only, a readable ``@champion`` history, and
verified loading of any exported format of a version.

Conventions on each version (all MLflow model version tags: only what a user filters on or
a loader must trust; the rest is in the model card, the run and the version's files):

- ``imgclf.manifest_sha256``: the sha256 of ``formats/manifest.json``, which lists the sha256 of
  every exported file: loading checks the manifest against the tag (kept apart from the files),
  then each file against the manifest (older versions' ``sha256.<path>`` tags still count);
- ``formats``: the formats that passed their parity check; ``format.<name>``: ``valid`` or
  ``invalid: <why>`` (each format's parity numbers are in the card and the run);
- ``imgclf.model_sha256``: the sha256 of the trained model file (``TrainOutputs.model``) the
  version was exported from, and ``imgclf.export_settings``: a hash of the export settings that
  shape its files. Export reconciles by this pair: a trained model is registered once, and a
  rerun (after a kill, or a forced ``dvc repro``) reuses and repairs its version;
  ``imgclf.broken``: why a version's files failed their check (it is never reused);
- ``champion.moved.<UTC time>``: one JSON record per move of ``@champion`` *to* this version
  (when, from which version, the metrics compared, forced or not, the reason);
  ``champion.left.<UTC time>``: when it lost ``@champion`` and to which version.

MLflow registry stages are deprecated and never used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imgclf import tracking
from imgclf.artifacts import FORMAT_FILES, ModelFolder
from imgclf.fileio import read_json
from imgclf.predictors import IntegrityError, Predictor, load_predictor, sha256_file, verify_files
from imgclf.tracking import VersionInfo

log = logging.getLogger(__name__)

MANIFEST_SHA_TAG = "imgclf.manifest_sha256"
LEGACY_SHA_PREFIX = "sha256."  # one tag per file, on versions registered before the manifest tag
FORMATS_TAG = "formats"  # the formats that passed their parity check, comma-separated
MOVED_PREFIX = "champion.moved."
LEFT_PREFIX = "champion.left."
MODEL_SHA_TAG = "imgclf.model_sha256"
SETTINGS_TAG = "imgclf.export_settings"
BROKEN_TAG = "imgclf.broken"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


@dataclass
class Move:
    """One move of an alias, as recorded on the version it moved to."""

    at: str
    alias: str
    to_version: str
    from_version: str | None
    forced: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    user: str = ""


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name/3`` -> ``(name, "3", None)``; ``models:/name@champion`` -> alias.

    Raises:
        ValueError: not a registry URI imgclf understands.
    """
    m = _URI.match(uri)
    if not m:
        raise ValueError(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    return m["name"], m["version"], m["alias"]


def resolve(uri: str) -> VersionInfo:
    """The version a registry URI points at (never creating a store where there is none).

    Raises:
        tracking.RegistryLookupError: no store, model, version or alias; says what exists.
    """
    name, version, alias = parse_model_uri(uri)
    tracking.open_registry()
    return tracking.get_version(name, version=version, alias=alias)


def find_export(name: str, model_sha256: str, settings: str) -> VersionInfo | None:
    """The version already exported from this trained model with these settings, if any.

    Versions whose files failed their check (``imgclf.broken``) do not count.
    """
    for info in tracking.list_versions(name):
        tags = info.tags
        if (
            tags.get(MODEL_SHA_TAG) == model_sha256
            and tags.get(SETTINGS_TAG) == settings
            and BROKEN_TAG not in tags
        ):
            return info
    return None


def fetch_version(info: VersionInfo, dst: Path) -> bool:
    """Download a version's ``formats/`` folder as ``dst`` and verify every valid format.

    Returns:
        False (``dst`` removed, the version tagged :data:`BROKEN_TAG` so that it is never
        reused) when the files cannot be fetched or differ from their recorded hashes.
    """
    try:
        got = tracking.download_version_folder(info.name, info.version, dst.parent)
        if got != dst:
            os.replace(got, dst)
        expected = expected_hashes(info, dst)
        for fmt in valid_formats(info):
            verify_files(dst, FORMAT_FILES[fmt], expected)
    except Exception as exc:  # noqa: BLE001 - whatever failed, this version cannot be reused
        log.warning("registry: version %s cannot be reused (%s)", info.version, exc)
        tracking.set_version_tags(info.name, info.version, {BROKEN_TAG: str(exc)[:5000]})
        shutil.rmtree(dst, ignore_errors=True)
        return False
    return True


def point_export_aliases(
    name: str, version: str, held: list[str], challenger: str, champion: str
) -> list[str]:
    """``challenger`` always points at the exported version; ``champion`` only when there is
    none. Returns which of the two the version holds: the same after a rerun (that repairs a
    version registered by a killed export) as after one uninterrupted export.

    Replacing an existing champion is ``imgclf promote``'s job, behind its gate.
    """
    if challenger not in held:
        tracking.set_alias(name, challenger, version)
    try:
        current = tracking.get_version(name, alias=champion).version
    except LookupError:
        move_alias(name, champion, version, reason="first registered version (no champion yet)")
        current = version
    return [challenger] + ([champion] if current == version else [])


def expected_hashes(info: VersionInfo, folder: Path) -> dict[str, str]:
    """``{path: sha256}`` recorded at export: the manifest downloaded into ``folder``, once its
    own sha256 matches the version's :data:`MANIFEST_SHA_TAG`.

    Raises:
        IntegrityError: the version records no hash, or the manifest is missing or changed.
    """
    pre = LEGACY_SHA_PREFIX
    if legacy := {k.removeprefix(pre): v for k, v in info.tags.items() if k.startswith(pre)}:
        return legacy
    digest, manifest = info.tags.get(MANIFEST_SHA_TAG, ""), ModelFolder(folder).manifest
    if not manifest.is_file() or sha256_file(manifest) != digest:
        raise IntegrityError(
            f"{manifest}: missing, or its sha256 differs from the {digest[:12] or 'no'}… "
            f"{MANIFEST_SHA_TAG} of {info.name} version {info.version}; refusing to load it"
        )
    return dict(read_json(manifest))


def valid_formats(info: VersionInfo) -> list[str]:
    """Formats of the version that passed their parity check."""
    return [f for f in info.tags.get(FORMATS_TAG, "").split(",") if f]


def version_classes(info: VersionInfo) -> list[str]:
    """The class names, in output order, recorded on the version."""
    return list(json.loads(info.tags["classes"]))


def version_fit(info: VersionInfo) -> str:
    """How the version's input images are fitted to its aspect (``data.fit``); versions
    registered before the tag existed were all trained on stretched images."""
    return info.tags.get("image_fit", "stretch")


def load_version(info: VersionInfo, fmt: str, cache_dir: Path | None = None) -> Predictor:
    """Download format ``fmt`` of a version, verify every file's sha256, then load it.

    Raises:
        LookupError: the format is not a valid one of this version.
        imgclf.predictors.IntegrityError: a downloaded file's bytes differ from the recorded hash.
    """
    if fmt not in valid_formats(info):
        why = info.tags.get(f"format.{fmt}", "not exported")
        raise LookupError(f"{info.name} version {info.version} has no valid {fmt} file ({why})")
    rel = FORMAT_FILES[fmt]
    if cache_dir is not None:
        return _download_and_load(info, fmt, rel, cache_dir)
    # Every runtime holds the model in memory (or mmaps it, which outlives the unlink on
    # POSIX) once loaded, so the downloaded copy need not stay on disk.
    with tempfile.TemporaryDirectory(prefix="imgclf-model-") as tmp:
        return _download_and_load(info, fmt, rel, Path(tmp))


def _download_and_load(info: VersionInfo, fmt: str, rel: str, folder: Path) -> Predictor:
    tracking.download_version_files(info.name, info.version, rel, folder)
    if not any(k.startswith(LEGACY_SHA_PREFIX) for k in info.tags):
        name = ModelFolder.manifest.name
        tracking.download_version_files(info.name, info.version, name, folder)
    return load_predictor(fmt, folder, expected_hashes(info, folder))


def utc_now() -> str:
    """UTC time with microseconds: sortable, and unique enough to key history tags."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def move_alias(
    name: str,
    alias: str,
    to_version: str,
    *,
    reason: str,
    forced: bool = False,
    metrics: dict[str, Any] | None = None,
) -> Move:
    """Point ``alias`` at ``to_version`` and record the move on both versions involved."""
    try:
        previous: str | None = tracking.get_version(name, alias=alias).version
    except LookupError:
        previous = None
    move = Move(
        at=utc_now(),
        alias=alias,
        to_version=str(to_version),
        from_version=previous,
        forced=forced,
        reason=reason,
        metrics=metrics or {},
        user=os.environ.get("USER", ""),
    )
    # The record goes first: an interruption can leave a record of a move that did not happen
    # (the alias still says where the champion is), never a move without its record.
    tracking.set_version_tags(
        name, str(to_version), {f"{MOVED_PREFIX}{move.at}": json.dumps(move.__dict__)}
    )
    tracking.set_alias(name, alias, str(to_version))
    if previous is not None and previous != str(to_version):
        tracking.set_version_tags(
            name,
            previous,
            {f"{LEFT_PREFIX}{move.at}": json.dumps({"alias": alias, "replaced_by": to_version})},
        )
    log.info(
        "registry: @%s of %s moved %s -> %s (%s%s)",
        alias,
        name,
        previous or "none",
        to_version,
        "forced: " if forced else "",
        reason,
    )
    return move


def history(name: str, alias: str = "champion") -> list[Move]:
    """Every recorded move of ``alias``, oldest first."""
    moves = []
    for info in tracking.list_versions(name):
        for key, value in info.tags.items():
            if key.startswith(MOVED_PREFIX):
                move = Move(**json.loads(value))
                if move.alias == alias:
                    moves.append(move)
    return sorted(moves, key=lambda m: m.at)


SUMMARY_TAGS = (
    "test_accuracy",
    "test_leakfree_accuracy",
    "test_macro_f1",
    "data_md5",
    "git_commit",
    FORMATS_TAG,
)


def describe(name: str, alias: str = "champion") -> dict[str, Any]:
    """Versions (aliases, metrics, formats, lineage) and the alias history, as plain data."""
    versions = [
        {
            "version": v.version,
            "aliases": v.aliases,
            "created": datetime.fromtimestamp(v.created_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M"),
            **{k: v.tags.get(k, "") for k in SUMMARY_TAGS},
            "invalid_formats": {
                k.removeprefix("format."): val
                for k, val in v.tags.items()
                if k.startswith("format.") and val != "valid"
            },
        }
        for v in tracking.list_versions(name)
    ]
    return {
        "name": name,
        "versions": versions,
        "history": [m.__dict__ for m in history(name, alias)],
    }
