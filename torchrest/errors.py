"""Every failure a client can see, with its HTTP status and machine-readable code.

Raise the subclass where the failure happens; the API layer turns any `TorchrestError` into
`{"status": "failed", "code": ..., "message": ...}` with `status` as the HTTP status. This module is the
one table of codes (`error_table()` renders it for docs/serving.md).
"""

from __future__ import annotations

import math


class TorchrestError(Exception):
    """An unexpected server-side failure."""

    status: int = 500
    code: str = "internal_error"
    headers: dict[str, str] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(TorchrestError):
    """A parameter, header or inference request is malformed or out of range (`top_k`, `X-Request-Timeout-Ms`)."""

    status = 400
    code = "invalid_parameter"


class TaskNotServed(TorchrestError):
    """The model does not do what the endpoint asks (`/detect` of a classifier): the message names its tasks."""

    status = 400
    code = "task_not_served"


class MissingImage(TorchrestError):
    """No `image` field in the form, or an empty body."""

    status = 400
    code = "missing_image"


class InvalidImage(TorchrestError):
    """The bytes are not a decodable image of a supported format (JPEG, PNG, WebP, GIF, BMP), or are truncated."""

    status = 400
    code = "invalid_image"


class MalformedRequest(TorchrestError):
    """The multipart body is malformed (no boundary, broken framing, ends inside the image part)."""

    status = 400
    code = "malformed_request"


class LoadFailed(TorchrestError):
    """A model load (`POST /v2/repository/models/{name}/load`) failed; what was serving still serves."""

    status = 400
    code = "load_failed"


class Unauthorized(TorchrestError):
    """A missing or wrong API key (inference, with `--api-keys-file`) or admin token (repository load/unload)."""

    status = 401
    code = "unauthorized"
    headers = {"www-authenticate": 'Bearer realm="torchrest"'}


class Forbidden(TorchrestError):
    """Repository load/unload while no admin token is configured (`--admin-token-file`): they are off by default."""

    status = 403
    code = "forbidden"


class NotFound(TorchrestError):
    """No such route, or no such model (or version)."""

    status = 404
    code = "not_found"


class MethodNotAllowed(TorchrestError):
    """The route exists but not for this method."""

    status = 405
    code = "method_not_allowed"


class RequestTimeout(TorchrestError):
    """The client sent its headers or body too slowly (over `--read-timeout` seconds); the connection is closed."""

    status = 408
    code = "request_timeout"
    headers = {"connection": "close"}


class BodyTooLarge(TorchrestError):
    """The request body is over `--max-body-mb`; refused before it is read."""

    status = 413
    code = "body_too_large"
    headers = {"connection": "close"}  # stop the upload rather than read and discard the rest


class ImageTooLarge(TorchrestError):
    """The declared image size is over `--max-image-megapixels` (decompression bomb); refused before decoding."""

    status = 413
    code = "image_too_large"


class AnswerTooLarge(TorchrestError):
    """The answer would be over `--max-body-mb` (a segmentation mask of a very large image); send a smaller image."""

    status = 413
    code = "answer_too_large"


class UnsupportedMediaType(TorchrestError):
    """The content type is neither `multipart/form-data` nor `image/*` (or `application/octet-stream`)."""

    status = 415
    code = "unsupported_media_type"


class ModelError(TorchrestError):
    """The model raised on this request's batch; other batches are unaffected."""

    status = 500
    code = "model_error"


class InvalidModelOutput(ModelError):
    """The model's output for this image holds NaN or infinite values; the batch's other images are answered."""

    status = 500
    code = "invalid_model_output"


class TaskFailed(ModelError):
    """A task's own step raised (its batched step on the engine: that batch's images; its answer: that request)."""

    status = 500
    code = "task_failed"


class NotReady(TorchrestError):
    """The model is loading or unloaded (or, on `/health`, an instance that died is being restarted)."""

    status = 503
    code = "not_ready"
    headers = {"retry-after": "1", "connection": "close"}


class TooManyConnections(TorchrestError):
    """This process holds `--max-connections` open connections already: the new one is answered and closed."""

    status = 503
    code = "too_many_connections"
    headers = {"retry-after": "1", "connection": "close"}


class TooManyUploads(TorchrestError):
    """The bodies this process is receiving hold `--max-receiving-mb` already: this one is refused mid-way."""

    status = 503
    code = "too_many_uploads"
    headers = {"retry-after": "1", "connection": "close"}


class QueueFull(TorchrestError):
    """The model's queue is full, or what is queued would keep this request past its deadline; retry after
    `Retry-After` seconds (the queue's expected wait, at least 1)."""

    status = 503
    code = "queue_full"
    headers = {"retry-after": "1", "connection": "close"}

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.headers = {"retry-after": str(max(1, math.ceil(retry_after_s))), "connection": "close"}


class DeadlineExceeded(TorchrestError):
    """Queued past its deadline (`--timeout-ms`, or a shorter `X-Request-Timeout-Ms`): dropped before the model."""

    status = 504
    code = "deadline_exceeded"


class StartupError(Exception):
    """A configuration the server cannot start with (options, port, secrets, TLS files); the CLI prints it
    on one line, exit 2."""


class ModelLoadError(Exception):
    """A model that cannot be loaded: unknown name, missing or corrupt weights, labels or artifact, a broken
    model folder. At start-up the CLI prints it on one line (exit 2); a load while serving answers 400
    (`LoadFailed`) with it, and what was serving keeps serving."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message as one short line, for one-line errors and reports (libraries raise
    messages many lines long, or empty ones)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:limit]


def all_errors() -> list[type[TorchrestError]]:
    """Every error a client can get, ordered by status and code."""
    seen: list[type[TorchrestError]] = [TorchrestError, *_all_subclasses(TorchrestError)]
    return sorted(seen, key=lambda c: (c.status, c.code))


def error_table() -> str:
    """docs/serving.md's table of error codes, generated from the classes above."""
    rows = ["| status | code | when |", "| --- | --- | --- |"]
    for cls in all_errors():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        rows.append(f"| {cls.status} | `{cls.code}` | {doc} |")
    return "\n".join(rows)


def _all_subclasses(cls: type[TorchrestError]) -> list[type[TorchrestError]]:
    out: list[type[TorchrestError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out
