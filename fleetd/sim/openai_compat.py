"""Ollama's OpenAI-compatible layer (/v1/*): the same models and scheduler as the native
API, OpenAI's shapes, SSE streaming ending in ``data: [DONE]`` — and no keep_alive, so a
/v1 request that has to load a model leaves it resident for the default 5 minutes only.
"""

from __future__ import annotations

import base64
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from fleetd.sim import names
from fleetd.sim.context import SIM, decode, reply, stream
from fleetd.sim.inference import Turn, capable, embed_inputs, embed_texts, generate
from fleetd.sim.scheduler import SimError

routes = web.RouteTableDef()


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _Request(msgspec.Struct):
    model: str = ""
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None


class ChatMessage(msgspec.Struct):
    role: str = ""
    content: str | list[Any] | None = None


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = []


class CompletionRequest(_Request):
    prompt: str = ""


class EmbeddingRequest(msgspec.Struct):
    model: str = ""
    input: Any = None
    dimensions: int = 0
    encoding_format: str = "float"


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error object as Ollama's layer fills it."""
    kind = "invalid_request_error" if status == 400 else "api_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _text(message: ChatMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    parts = message.content or []
    return " ".join(p.get("text", "") for p in parts if isinstance(p, dict))


def _usage(turn: Turn) -> dict[str, int]:
    total = turn.prompt_tokens + len(turn.tokens)
    return {
        "prompt_tokens": turn.prompt_tokens,
        "completion_tokens": len(turn.tokens),
        "total_tokens": total,
    }


async def _complete(
    request: web.Request,
    req: _Request,
    prompt: str,
    verb: str,
    envelope: Callable[[str, str | None], dict[str, Any]],
) -> web.StreamResponse:
    """Run one /v1 generation; ``envelope(text, finish_reason)`` shapes each object."""
    sim = request.app[SIM]
    name, model = sim.installed(req.model)
    capable(req.model, model.spec, "completion", verb)
    options = {"num_predict": req.max_tokens} if req.max_tokens else None
    turn = Turn.plan(sim, prompt, options)
    async with sim.scheduler.use(name, model.spec, None):
        turn.loaded()
        sim.stats.requests[name] += 1
        if not req.stream:
            text = "".join([t async for t in generate(request, turn)])
            return reply(envelope(text, turn.done_reason) | {"usage": _usage(turn)})
        response = await stream(request, "text/event-stream")
        try:
            async for token in generate(request, turn):
                await response.write(_event(envelope(token, None)))
            last = envelope("", turn.done_reason)
            await response.write(_event(last))
            if req.stream_options is not None and req.stream_options.include_usage:
                usage = last | {"choices": [], "usage": _usage(turn)}
                await response.write(_event(usage))
            await response.write(b"data: [DONE]\n\n")
        except ConnectionError:
            pass  # the client left: stop generating
        return response


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + msgspec.json.encode(data) + b"\n\n"


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = await decode(request, ChatCompletionRequest)
    if not req.messages:
        raise SimError(400, "[] is too short - 'messages'")
    ident = f"chatcmpl-{random.randrange(999)}"

    def envelope(text: str, finish: str | None) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        head = {"id": ident, "created": int(time.time()), "model": req.model}
        if req.stream:
            choice = {"index": 0, "delta": message, "finish_reason": finish}
            return head | {"object": "chat.completion.chunk", "choices": [choice]}
        choice = {"index": 0, "message": message, "finish_reason": finish}
        return head | {"object": "chat.completion", "choices": [choice]}

    prompt = " ".join(_text(m) for m in req.messages)
    return await _complete(request, req, prompt, "chat", _fingerprinted(envelope))


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    req = await decode(request, CompletionRequest)
    ident = f"cmpl-{random.randrange(999)}"

    def envelope(text: str, finish: str | None) -> dict[str, Any]:
        choice = {"text": text, "index": 0, "finish_reason": finish}
        return {
            "id": ident,
            "object": "text_completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [choice],
        }

    return await _complete(request, req, req.prompt, "generate", _fingerprinted(envelope))


def _fingerprinted(
    envelope: Callable[[str, str | None], dict[str, Any]],
) -> Callable[[str, str | None], dict[str, Any]]:
    return lambda text, finish: envelope(text, finish) | {"system_fingerprint": "fp_ollama"}


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    req = await decode(request, EmbeddingRequest)
    value = [""] if req.input == "" else req.input
    if value is None or value == []:
        raise SimError(400, "invalid input")
    if req.encoding_format not in ("float", "base64"):
        raise SimError(400, f"invalid encoding_format {req.encoding_format!r}")
    texts = embed_inputs(value)
    vectors, turn = await embed_texts(request, req.model, texts, None, req.dimensions)
    encode = _base64 if req.encoding_format == "base64" else None
    return reply(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "embedding": encode(v) if encode else v, "index": i}
                for i, v in enumerate(vectors)
            ],
            "model": req.model,
            "usage": {"prompt_tokens": turn.prompt_tokens, "total_tokens": turn.prompt_tokens},
        }
    )


def _base64(vector: list[float]) -> str:
    """As Ollama and OpenAI send it: the vector as little-endian float32, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _model_object(name: str, modified_ns: int) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": modified_ns // 1_000_000_000,
        "owned_by": names.parse(name)[1],
    }


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    installed = request.app[SIM].store.installed
    newest = sorted(installed.items(), key=lambda kv: -kv[1].modified_ns)
    data = [_model_object(name, m.modified_ns) for name, m in newest]
    return reply({"object": "list", "data": data or None})


@routes.get("/v1/models/{model}")
async def get_model(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    raw = request.match_info["model"]
    model = sim.store.installed.get(sim.resolve(raw))
    if model is None:
        raise SimError(404, f"model '{raw}' not found")
    return reply(_model_object(raw, model.modified_ns))
