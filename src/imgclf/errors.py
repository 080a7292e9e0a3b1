"""Errors the CLI reports as a one-line message (no traceback), kept free of heavy imports.

``imgclf predict`` must start fast: importing the stage modules only for their exception classes
would pull in MLflow, scikit-learn and matplotlib before a single image is read.
"""


class IngestError(RuntimeError):
    """The dataset failed a configured limit."""


class ExportError(RuntimeError):
    """A required format failed its check; nothing was registered."""


class PromotionError(RuntimeError):
    """Promotion cannot even be judged (no candidate, no reason for --force, stale data)."""
