"""What a prediction answers, when it is ``uncertain``, and how results are written out.

Shared by ``imgclf predict`` and the HTTP server, so both answer alike.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from typing import BinaryIO

UNCERTAIN = "uncertain"  # the label of an answer the rule below does not trust
LOW_CONFIDENCE = "low_confidence"  # why: the top probability is under the threshold
SMALL_IMAGE = "small_image"  # why: the image's shorter side is under the minimum


@dataclass(frozen=True)
class ConfidenceRule:
    """When an answer is ``uncertain`` instead of the top class.

    - the image's shorter side (as sent, before resizing) is under ``min_side`` pixels
      (default: half the model's shorter input side): stretched to the input size, such an
      image is mostly interpolation blur, unlike the training photos (median shorter side
      360 px on the id-cards data, 123 px the smallest);
    - or the top probability is under ``min_probability`` (default: a tenth of the way from
      chance to certainty, ``1/n + 0.1 * (1 - 1/n)``: 0.40 for three classes): the model
      can barely tell the classes apart, as with images unlike any class it was trained on.
    The top probability and every class's probability are still reported.
    """

    min_probability: float | None = None
    min_side: int | None = None

    def min_side_for(self, input_shape: tuple[int, int]) -> int:
        """The minimum side for a model whose input is ``(height, width)``."""
        return self.min_side if self.min_side is not None else min(input_shape) // 2

    def min_probability_for(self, n_classes: int) -> float:
        """The probability floor for a model with ``n_classes`` outputs."""
        if self.min_probability is not None:
            return self.min_probability
        chance = 1.0 / max(n_classes, 1)
        return chance + 0.1 * (1.0 - chance)

    def judge(self, pred: Prediction, side: int, input_shape: tuple[int, int]) -> Prediction:
        """Mark ``pred`` uncertain when the rule says so (``side``: the image's shorter side)."""
        floor = self.min_probability_for(len(pred.probabilities or {}))
        if side < self.min_side_for(input_shape):
            pred.uncertain = SMALL_IMAGE
        elif pred.probability is not None and pred.probability < floor:
            pred.uncertain = LOW_CONFIDENCE
        if pred.uncertain:
            pred.label = UNCERTAIN
        return pred


@dataclass
class Prediction:
    path: str
    label: str | None
    probability: float | None
    probabilities: dict[str, float] | None = None
    error: str | None = None
    uncertain: str | None = None  # why the label is "uncertain" (ConfidenceRule), else None


OUTPUTS = ("text", "json", "jsonl", "csv")


def write_results(results: list[Prediction], fmt: str, out: BinaryIO, classes: list[str]) -> None:
    """Write ``results`` as ``text`` (tab-separated, control characters in names escaped),
    ``json`` (one array), ``jsonl`` (one object a line) or ``csv`` (RFC 4180 quoting, a
    ``p_<class>`` column per class).

    Any file name survives: JSON escapes it; CSV quotes commas, quotes and newlines and writes
    the name's own bytes (a name that is not UTF-8 included); text escapes tabs, newlines,
    backslashes and undecodable bytes, so every result is one line.
    """
    if fmt == "json":
        out.write(json.dumps([asdict(r) for r in results], indent=2).encode() + b"\n")
    elif fmt == "jsonl":
        out.write(b"".join(json.dumps(asdict(r)).encode() + b"\n" for r in results))
    elif fmt == "csv":
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, lineterminator="\r\n")
        writer.writerow(
            ["path", "label", "probability", "uncertain", "error"] + [f"p_{c}" for c in classes]
        )
        for r in results:
            probs = (
                [r.probabilities[c] for c in classes] if r.probabilities else [""] * len(classes)
            )
            writer.writerow(
                [
                    r.path,
                    r.label or "",
                    _num(r.probability),
                    r.uncertain or "",
                    r.error or "",
                    *probs,
                ]
            )
        out.write(buf.getvalue().encode("utf-8", "surrogateescape"))
    elif fmt == "text":
        for r in results:
            name = _escape(r.path)
            if r.error:
                line = f"{name}\tERROR\t{_escape(r.error)}"
            else:
                line = f"{name}\t{r.label}\t{r.probability:.4f}"
                if r.uncertain:
                    line += f"\t{r.uncertain}"
            out.write(line.encode() + b"\n")
    else:
        raise ValueError(f"output must be one of {OUTPUTS}, not {fmt!r}")


def _num(x: float | None) -> str:
    return "" if x is None else repr(x)


def _escape(text: str) -> str:
    """One printable line: backslashes, tabs, newlines and other control characters escaped,
    and a name's bytes that are not UTF-8 as ``\\xNN``."""
    text = text.replace("\\", "\\\\")
    text = "".join(
        _CONTROL.get(ch, f"\\x{ord(ch):02x}") if ord(ch) < 32 or ord(ch) == 127 else ch
        for ch in text
    )
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_CONTROL = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
