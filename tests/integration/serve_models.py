"""Small real ONNX models for the server tests, written as an export folder (no TensorFlow).

A colour classifier: the mean of each RGB channel, times a 3x3 weight matrix, softmax. The tiny
dataset's classes are red stripes, green stripes and a blue disc, so the identity weights label
every tiny image right with probability > 0.9; a permuted matrix makes a "different model" for
reload tests. The folder has the manifest, classes and input spec export writes, so it loads
through the same sha256 verification as a real export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from imgclf.artifacts import FORMAT_FILES, ModelFolder
from imgclf.predictors import hash_tree

CLASSES = ["alpha", "beta", "gamma"]
HEIGHT, WIDTH = 32, 48


def colour_model(weights: np.ndarray, fails: bool = False) -> onnx.ModelProto:
    """uint8 (N, 32, 48, 3) -> softmax(mean RGB @ weights), (N, 3).

    ``fails``: every call raises in onnxruntime (the output gathers a 6th class that is not
    there), while the model still loads: a model error at request time.
    """
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3], weights.astype(np.float32).ravel())
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["xf"], ["m"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    initializer = [w]
    if fails:
        nodes[-1].output[0] = "soft"
        nodes.append(helper.make_node("Gather", ["soft", "classes"], ["probs"], axis=1))
        initializer.append(helper.make_tensor("classes", TensorProto.INT64, [3], [0, 1, 5]))
    graph = helper.make_graph(
        nodes,
        "colour",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", HEIGHT, WIDTH, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        initializer=initializer,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


IDENTITY = np.eye(3) * 0.1
ROTATED = np.roll(np.eye(3), 1, axis=1) * 0.1  # answers the next class: a different model


def write_export(
    folder: Path, weights: np.ndarray = IDENTITY, fit: str = "stretch", fails: bool = False
) -> Path:
    """An export-like model folder: model.onnx, classes, input spec and the sha256 manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(colour_model(weights, fails), folder / FORMAT_FILES["onnx"])
    out = ModelFolder(folder)
    out.write_classes(CLASSES)
    out.write_input_spec({"image_height": HEIGHT, "image_width": WIDTH, "fit": fit})
    out.write_manifest(hash_tree(folder, FORMAT_FILES["onnx"]))
    return folder
