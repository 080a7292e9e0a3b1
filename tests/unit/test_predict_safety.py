"""predict loads only from the registry or a file named explicitly, and never runs its code."""

from __future__ import annotations

import keras
import pytest

from imgclf.predict import ModelLoadError, load_model


@pytest.mark.parametrize(
    "spec", ["runs:/0123abcd/model", "https://example.com/model.h5x", "s3://bucket/model"]
)
def test_only_registry_uris_or_files(spec):
    with pytest.raises(ModelLoadError, match="not a registry URI"):
        load_model(spec)


def test_a_model_with_embedded_code_is_refused(tmp_path):
    inputs = keras.Input((4, 4, 3))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    path = tmp_path / "evil.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ModelLoadError, match="unsafe|safe_mode|Lambda"):
        load_model(str(path))
