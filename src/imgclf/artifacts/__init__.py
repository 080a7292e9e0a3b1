"""Every stage output: its folder, its file names and its typed read and write, in one place.

One class per stage output folder (:mod:`.stage_outputs`), plus :class:`ModelFolder`
(:mod:`.model_folder`): the exported model's files, laid out the same in the export stage's
model folder and in a registry version; and the decoded images' shards with the one reader
every consumer streams them through (:mod:`.shards`). The folders build on :mod:`.layout`'s
:class:`Outputs` and :class:`File`. On an instance an attribute is a path
(``PreprocessOutputs(root).shards``); on the class it is the file's entry, whose ``.name`` is
the file name. Stages, sweeps, promote, predict and the benchmark reach each other's outputs
only through this package (imported as ``imgclf.artifacts``), so each file name appears once in
the code; ``dvc.yaml`` repeats the paths, and tests/unit/test_artifacts.py checks that the two
agree. Every write is atomic (:mod:`imgclf.fileio`; a shard folder is renamed into place whole):
a killed stage never leaves half a file.
"""

from imgclf.artifacts.layout import ARTIFACTS_DIR, File, Outputs
from imgclf.artifacts.model_folder import FORMAT_FILES, ModelDescription, ModelFolder
from imgclf.artifacts.shard_writer import ShardWriter
from imgclf.artifacts.shards import (
    Rows,
    ShardError,
    ShardReader,
    concat,
    rows_per_shard,
)
from imgclf.artifacts.stage_outputs import (
    CVOutputs,
    EvaluateOutputs,
    ExportOutputs,
    IngestOutputs,
    PreprocessOutputs,
    TrainOutputs,
    write_predictions,
)

__all__ = [
    "ARTIFACTS_DIR",
    "FORMAT_FILES",
    "CVOutputs",
    "EvaluateOutputs",
    "ExportOutputs",
    "File",
    "IngestOutputs",
    "ModelDescription",
    "ModelFolder",
    "Outputs",
    "PreprocessOutputs",
    "TrainOutputs",
    "Rows",
    "ShardError",
    "ShardReader",
    "ShardWriter",
    "concat",
    "rows_per_shard",
    "write_predictions",
]
