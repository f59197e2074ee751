"""HTTP plumbing shared by both roles: the process's one ClientSession, JSON in and out, tokens."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import aiohttp
import msgspec
from aiohttp import web

from fleetd.core import throttle
from fleetd.core.errors import ApiError, bad_request, explain_validation, too_deep
from fleetd.core.names import InvalidModelName, is_valid, normalize

CLIENT = web.AppKey("client", aiohttp.ClientSession)

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


def client_ctx(limit: int = 512, headers: dict[str, str] | None = None) -> Any:
    """A cleanup_ctx entry that opens the process's single ClientSession (sized pool);
    ``headers`` go with every request it sends."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=300)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=10),
            headers=headers,
        ) as session:
            app[CLIENT] = session
            yield

    return ctx


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_encoder.encode(obj), status=status, content_type="application/json", headers=headers
    )


class _ModelOnly(msgspec.Struct):
    model: Any = None


async def read_json(request: web.Request, type_: type[T], *, model_first: bool = False) -> T:
    """Decode the body strictly into ``type_``; any problem is a 400 naming the field.

    With ``model_first``, a ``model`` that breaks Ollama's naming rule is refused before
    anything else in the body is looked at: a bad name must not
    surface as some other field's error, nor reach an agent.
    """
    body = await request.read()
    if not body:
        raise bad_request("request body is empty; expected a JSON object")
    if model_first:
        try:
            model = msgspec.json.decode(body, type=_ModelOnly).model
        except (msgspec.DecodeError, msgspec.ValidationError):
            model = None  # the strict decode below names the problem
        except RecursionError:
            raise too_deep() from None
        if isinstance(model, str) and not is_valid(model):
            raise bad_request(f"model: invalid model name {model!r}", param="model")
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as e:
        raise bad_request(_validation_message(str(e))) from None
    except msgspec.DecodeError as e:
        raise bad_request(f"malformed JSON: {e}") from None
    except RecursionError:
        raise too_deep() from None


class Head(msgspec.Struct):
    """The only fields a hop reads from an inference body it forwards as bytes."""

    model: str = ""
    name: str = ""  # /api/show's older spelling of ``model``


H = TypeVar("H", bound=Head)


def decode_head(decoder: msgspec.json.Decoder[H], body: bytes) -> H:
    """The head of a forwarded body; 400 for an empty, malformed or mistyped one."""
    if not body:
        raise bad_request("request body is empty; expected a JSON object")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as e:
        raise bad_request(f"invalid request body: {e}") from None
    except msgspec.DecodeError as e:
        raise bad_request(f"malformed JSON: {e}") from None
    except RecursionError:
        raise too_deep() from None


_models_seen: dict[str, str] = {}
_MODELS_SEEN_MAX = 4096


def request_model(raw: str) -> str:
    """The normalized model a client request names; 400 when missing or invalid. Names seen
    before skip the regular expression: this runs on every inference request."""
    name = _models_seen.get(raw)
    if name is not None:
        return name
    if not raw:
        raise bad_request("model is required", param="model")
    try:
        name = normalize(raw)
    except InvalidModelName:
        raise bad_request(f"invalid model name {raw!r}", param="model") from None
    if len(_models_seen) < _MODELS_SEEN_MAX:
        _models_seen[raw] = name
    return name


def _validation_message(msg: str) -> str:
    path, reason = explain_validation(msg)
    if reason == "unknown key":
        reason = "unknown field"
    elif reason == "required key is missing":
        reason = "required field is missing"
    return f"{path}: {reason}" if path else f"request body: {reason}"


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison that takes any string: a header that is not UTF-8 (aiohttp
    keeps its bytes as surrogates) is just a wrong secret, not an encoding error."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def check_token(request: web.Request, expected: str) -> bool:
    """Constant-time check of ``Authorization: Bearer <token>``."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        return False
    return same_secret(value.strip(), expected)


def require_token(request: web.Request, expected: str, what: str) -> None:
    throttle.guard(request)
    if not check_token(request, expected):
        if request.headers.get("Authorization"):
            throttle.failed(request, what)  # a wrong guess; a missing token is not one
        raise ApiError(
            401,
            "unauthorized",
            f"missing or wrong {what} (send Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
