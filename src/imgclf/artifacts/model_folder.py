"""An exported model's folder: the same layout in the export stage's output and in a registry
version, so predict and serve read either the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imgclf.artifacts.layout import MANIFEST_NAME, File, Outputs
from imgclf.config import FITS, FORMAT_NAMES
from imgclf.fileio import read_json, write_json

# Where each exported format lives inside a model folder (a SavedModel is a folder).
FORMAT_FILES: dict[str, str] = {
    "h5": "model.h5",
    "keras": "model.keras",
    "saved_model": "saved_model",
    "tflite": "model.tflite",
    "onnx": "model.onnx",
}
assert tuple(FORMAT_FILES) == FORMAT_NAMES


# The files that describe a model's input and output, kept beside the tensors by preprocess
# and beside the model files by export, so predict and serve prepare images as training did.
class ModelDescription(Outputs):
    classes = File("classes.json")
    input_spec = File("input.json")  # image_height, image_width, data.fit

    def read_classes(self) -> list[str]:
        return [str(c) for c in read_json(self.classes)]

    def write_classes(self, classes: list[str]) -> None:
        write_json(self.classes, classes)

    def read_input_spec(self) -> dict[str, Any]:
        return dict(read_json(self.input_spec))

    def write_input_spec(self, spec: Mapping[str, Any]) -> None:
        write_json(self.input_spec, dict(spec))

    def read_fit(self) -> str:
        """``data.fit`` from :attr:`input_spec`; ``stretch`` without one (everything made
        before the file existed was stretched).

        Raises:
            ValueError: the recorded fit is not one this version knows (names the file).
        """
        if not self.input_spec.is_file():
            return "stretch"
        fit = read_json(self.input_spec).get("fit", "stretch")
        if fit not in FITS:
            raise ValueError(
                f"{self.input_spec}: fit {fit!r} is not one of {FITS}; re-run preprocess/export"
            )
        return str(fit)


class ModelFolder(ModelDescription):
    """An exported model's files: every valid format (:data:`FORMAT_FILES`), the class names, the
    input spec, the parity check's results and the manifest (the sha256 of every file)."""

    manifest = File(MANIFEST_NAME)
    parity = File("parity.json")  # per-format parity with the Keras model

    def read_manifest(self) -> dict[str, str] | None:
        """``{relative path: sha256}``, or ``None`` when the folder has no manifest."""
        return dict(read_json(self.manifest)) if self.manifest.is_file() else None

    def write_manifest(self, manifest: dict[str, str]) -> None:
        write_json(self.manifest, manifest)

    def write_parity(self, parity: dict[str, Any]) -> None:
        write_json(self.parity, parity)
