"""Errors that reach users, and the one middleware that shapes them.

Handlers raise ``ApiError``; the middleware answers ``{"error": {"message", "code"}}`` (or
OpenAI's or Ollama's shape on the inference paths) and turns anything unexpected into a 500
with the traceback logged, never returned.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

log = logging.getLogger("fleetd.http")


MAX_BODY_BYTES = 64 << 20
"""Largest request body either role accepts (chat requests may carry images)."""


class StartupError(Exception):
    """A role cannot start (unknown plugin, unusable data_dir…); shown as one line."""


class ApiError(Exception):
    """An expected failure with its HTTP status, a stable code and a message naming the fault."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.param = param


def explain_validation(msg: str) -> tuple[str, str]:
    """Split msgspec's ``Expected `int`, got `str` - at `$.a.b[0]` `` into a dotted path
    (``a.b[0]``, empty for the root) and a lower-case reason (``expected int, got str``)."""
    text, sep, where = msg.rpartition(" - at `")
    if not sep:
        text, where = msg, ""
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    for prefix, what in (
        ("Object contains unknown field ", "unknown key"),
        ("Object missing required field ", "required key is missing"),
    ):
        if text.startswith(prefix):
            field = text.removeprefix(prefix).strip("`")
            return (f"{path}.{field}" if path else field), what
    text = text.replace("Expected `", "expected ").replace("`, got `", ", got ").rstrip("`")
    return path, text


def bad_request(message: str, *, code: str = "bad_request", param: str | None = None) -> ApiError:
    return ApiError(400, code, message, param=param)


def too_deep() -> ApiError:
    """msgspec decodes nesting by recursion: a body nested thousands deep ends its stack."""
    return bad_request("malformed JSON: nested too deeply", code="too_deep")


def not_found(message: str, *, code: str = "not_found") -> ApiError:
    return ApiError(404, code, message)


_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
}


def error_body(path: str, err: ApiError) -> bytes:
    """Encode ``err`` in the shape the caller of ``path`` expects."""
    body: dict[str, Any]
    if path.startswith("/v1/"):
        body = {
            "error": {
                "message": err.message,
                "type": _OPENAI_TYPES.get(err.status, "api_error"),
                "param": err.param,
                "code": err.code,
            }
        }
    elif is_ollama_native(path):
        body = {"error": err.message, "code": err.code}
    else:
        body = {"error": {"message": err.message, "code": err.code}}
    return msgspec.json.encode(body)


_NATIVE = frozenset(
    {
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/show",
        "/api/tags",
        "/api/ps",
        "/api/version",
        "/api/pull",
        "/api/delete",
        "/api/copy",
        "/api/create",
        "/api/push",
    }
)


def is_ollama_native(path: str) -> bool:
    return path in _NATIVE


def error_response(path: str, err: ApiError) -> web.Response:
    return web.Response(
        status=err.status,
        body=error_body(path, err),
        content_type="application/json",
        headers=err.headers,
    )


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_reply(request: web.Request, e: Exception) -> web.Response:
    """The JSON answer for what a handler raised; a redirect (``HTTPException`` below 400)
    is raised again. Call it from the ``except`` block, so an unexpected error is logged
    with its traceback."""
    if isinstance(e, ApiError):
        return error_response(request.path, e)
    if isinstance(e, web.HTTPException):
        if e.status < 400:
            raise e
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            e.status, "http_error"
        )
        if e.status == 404:
            message = f"no route for {request.method} {request.path}"
        elif e.status == 413:
            message = f"request body too large (the limit is {MAX_BODY_BYTES >> 20} MiB)"
        else:
            message = e.reason
        return error_response(request.path, ApiError(e.status, code, message))
    if isinstance(e, RecursionError):
        # Only untrusted input nests deep enough (JSON decoded without read_json's check).
        log.warning("%s %s: request nested too deeply", request.method, request.path)
        return error_response(request.path, too_deep())
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(request.path, ApiError(500, "internal", "internal error"))


@web.middleware
async def error_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as e:
        return error_reply(request, e)
