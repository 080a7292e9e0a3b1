"""imgclf: a Keras document-image classifier wrapped in a DVC + Hydra + MLflow pipeline."""

__version__ = "0.1.0"
