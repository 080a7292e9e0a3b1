"""What the OpenAPI page (/docs, /openapi.json) says about each route.

The upload routes read their body themselves (raw bytes or multipart, under the guard's limits),
so their request bodies are declared here rather than inferred from parameters.
"""

from __future__ import annotations

from typing import Any

DESCRIPTION = """\
Upload an image file (JPEG, PNG, any format Pillow reads) and get the class probabilities of
the served model. The image is prepared exactly as the training images were (same decoder,
aspect fit and resize). Images whose shorter side is under the minimum, or whose top probability
is under the threshold, are answered `uncertain`.

Errors are JSON: `{"error": "<reason code>", "detail": "..."}`. When the server runs with
`IMGCLF_SERVE_TOKEN`, send `Authorization: Bearer <token>` with every request.
"""

_BINARY = {"type": "string", "format": "binary"}
_ERROR = {
    "description": "refused, with a reason code",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
            }
        }
    },
}
_ANSWER = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "description": "the class, or 'uncertain'"},
        "probability": {"type": "number", "description": "the top class's probability"},
        "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
        "uncertain": {
            "type": "string",
            "nullable": True,
            "description": "why the label is 'uncertain': small_image | low_confidence",
        },
        "model": {"type": "string", "description": "the model that answered"},
    },
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: _ERROR for code in codes}


PREDICT: dict[str, Any] = {
    "summary": "Classify one image",
    "description": "The body is the image file's bytes (`Content-Type: application/octet-stream`"
    " or `image/*`), or a multipart form with one file (`curl -F file=@scan.jpg`).",
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": _BINARY},
                "image/*": {"schema": _BINARY},
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {"file": _BINARY}}
                },
            },
        }
    },
    "responses": {
        200: {"description": "the answer", "content": {"application/json": {"schema": _ANSWER}}},
        **_errors(400, 401, 408, 413, 415, 422, 503),
    },
}

BATCH: dict[str, Any] = {
    "summary": "Classify several images in one request",
    "description": "A multipart form with one file part per image. Each result has the part's"
    " file name, and either the answer or its own error and reason code.",
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"files": {"type": "array", "items": _BINARY}},
                    }
                }
            },
        }
    },
    "responses": {
        200: {
            "description": "one result per file, in order",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"results": {"type": "array", "items": _ANSWER}},
                    }
                }
            },
        },
        **_errors(400, 401, 408, 413, 415, 503),
    },
}

HEALTH: dict[str, Any] = {
    "summary": "Liveness, and the model served",
    "responses": _errors(401),
}
READY: dict[str, Any] = {
    "summary": "Readiness: 503 once shutting down",
    "responses": _errors(401, 503),
}
METRICS: dict[str, Any] = {
    "summary": "Prometheus text metrics",
    "responses": _errors(401),
}
RELOAD: dict[str, Any] = {
    "summary": "Reload the model (a moved @champion), verified as at start-up",
    "description": "In-flight requests finish on the model they started with. If the new files"
    " fail verification or loading, the old model keeps serving and this answers 500"
    " `reload_failed`.",
    "responses": _errors(401, 500),
}
