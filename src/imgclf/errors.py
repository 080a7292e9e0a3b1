"""The project's expected failures: one base class the CLI reports as a one-line message.

Every failure a user can cause and fix (a bad config key, a missing or inconsistent input, a
refused promotion, a busy training run) subclasses :class:`ImgclfError`, with a message that names
the file or key and says what to do. The CLI catches this base class only, so anything else is a
bug and keeps its traceback. The classes raised by heavy modules subclass it where they are
defined; this module imports nothing, so ``imgclf predict`` need not import MLflow, scikit-learn or
matplotlib only for an exception class.
"""

EXIT_USER_ERROR = 2  # the exit status of a command that stopped on an ImgclfError


class ImgclfError(Exception):
    """An expected failure: the message names the file or key and what to do about it."""


class MissingInputError(ImgclfError, FileNotFoundError):
    """A file or folder a command needs does not exist (the message names it and its maker)."""


class IngestError(ImgclfError, RuntimeError):
    """The dataset failed a configured limit."""


class ExportError(ImgclfError, RuntimeError):
    """A required format failed its check; nothing was registered."""


class PromotionError(ImgclfError, RuntimeError):
    """Promotion cannot even be judged (no candidate, no reason for --force, stale data)."""
