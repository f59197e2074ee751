"""Ollama's native inference API (/api/generate, /api/chat, /api/embed, /api/embeddings)
and the simulated generation that the OpenAI layer reuses.

Replies are deterministic text paced by ``token_delay_ms``; what matters for fleetd is
that loading, keep_alive, queueing, streaming and errors behave as the real server's do.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from fleetd.sim import gotime
from fleetd.sim.catalog import EMBED_DIMS, ModelSpec
from fleetd.sim.context import SIM, Sim, client_gone, decode, line, reply, stream
from fleetd.sim.scheduler import SimError

routes = web.RouteTableDef()

_WORDS = ("This", " is", " a", " simulated", " reply", " from", " Ollama", ".")


class _Request(msgspec.Struct):
    model: str = ""
    stream: bool | None = None
    keep_alive: float | str | None = None
    options: dict[str, Any] | None = None


class GenerateRequest(_Request):
    prompt: str = ""


class Message(msgspec.Struct):
    role: str = ""
    content: str = ""


class ChatRequest(_Request):
    messages: list[Message] = []


class EmbedRequest(_Request):
    input: Any = None
    dimensions: int = 0


class EmbeddingsRequest(_Request):
    prompt: str = ""


def keep_alive(value: float | str | None) -> float | None:
    """A request's keep_alive in seconds (None when it carries none); bad ones are a 400."""
    if value is None:
        return None
    try:
        return gotime.keep_alive_seconds(value)
    except gotime.DurationError as exc:
        raise SimError(400, str(exc)) from None


def capable(raw: str, spec: ModelSpec, capability: str, verb: str) -> None:
    if capability not in spec.capabilities:
        raise SimError(400, f'"{raw}" does not support {verb}')


@dataclass
class Turn:
    """One generation: what it will say and how long each part took."""

    prompt_tokens: int
    tokens: list[str]
    done_reason: str = "stop"
    started_ns: int = field(default_factory=gotime.now_ns)
    load_ns: int = 0
    eval_ns: int = 1

    @classmethod
    def plan(cls, sim: Sim, prompt: str, options: dict[str, Any] | None) -> Turn:
        n = sim.options.num_chunks
        limit = (options or {}).get("num_predict")
        reason = "stop"
        if isinstance(limit, int) and 0 < limit < n:
            n, reason = limit, "length"
        tokens = [_WORDS[i % len(_WORDS)] for i in range(n)]
        return cls(max(len(prompt.split()), 1), tokens, reason)

    def loaded(self) -> None:
        self.load_ns = max(gotime.now_ns() - self.started_ns, 1)

    def metrics(self) -> dict[str, int]:
        return {
            "total_duration": gotime.now_ns() - self.started_ns,
            "load_duration": self.load_ns,
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": 1_000_000 * self.prompt_tokens,
            "eval_count": len(self.tokens),
            "eval_duration": self.eval_ns,
        }


async def generate(request: web.Request, turn: Turn) -> AsyncIterator[str]:
    """The reply's tokens, paced like a model; stops when the client has gone."""
    knobs = request.app[SIM].knobs
    await asyncio.sleep(knobs.latency_ms / 1000)
    start = gotime.now_ns()
    for i, token in enumerate(turn.tokens):
        if i:
            await asyncio.sleep(knobs.token_delay_ms / 1000)
        if client_gone(request):
            return
        turn.eval_ns = max(gotime.now_ns() - start, 1)
        yield token


async def _serve(
    request: web.Request,
    raw: str,
    turn: Turn,
    piece: Callable[[str], dict[str, Any]],
    final: dict[str, Any],
    stream_reply: bool,
) -> web.StreamResponse:
    """Stream NDJSON chunks (``piece(token)``) then ``final`` + metrics, or one object."""
    if not stream_reply:
        text = "".join([t async for t in generate(request, turn)])
        done = {"model": raw, "created_at": _now(), **piece(text)}
        return reply(
            done | {"done": True, "done_reason": turn.done_reason} | final | turn.metrics()
        )
    response = await stream(request, "application/x-ndjson")
    try:
        async for token in generate(request, turn):
            head = {"model": raw, "created_at": _now()}
            await response.write(line(head | piece(token) | {"done": False}))
        head = {"model": raw, "created_at": _now()}
        tail = {"done": True, "done_reason": turn.done_reason} | final | turn.metrics()
        await response.write(line(head | piece("") | tail))
    except ConnectionError:
        pass  # the client left: stop generating
    return response


def _now() -> str:
    return gotime.format_ns(gotime.now_ns())


@routes.post("/api/generate")
async def generate_text(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM]
    req = await decode(request, GenerateRequest)
    keep = keep_alive(req.keep_alive)
    name, model = sim.installed(req.model)
    if not req.prompt and keep == 0:
        sim.scheduler.expire(name)
        return reply(_empty(req.model, "unload", {"response": ""}))
    capable(req.model, model.spec, "completion", "generate")
    turn = Turn.plan(sim, req.prompt, req.options)
    ctx = _num_ctx(req.options)
    async with sim.scheduler.use(name, model.spec, keep, num_ctx=ctx, exclusive=bool(req.prompt)):
        turn.loaded()
        if not req.prompt:
            return reply(_empty(req.model, "load", {"response": ""}))
        sim.stats.requests[name] += 1
        context = {"context": list(range(1, turn.prompt_tokens + len(turn.tokens) + 1))}
        return await _serve(
            request, req.model, turn, lambda t: {"response": t}, context, req.stream is not False
        )


@routes.post("/api/chat")
async def chat(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM]
    req = await decode(request, ChatRequest)
    keep = keep_alive(req.keep_alive)
    name, model = sim.installed(req.model)
    empty_message = {"message": {"role": "assistant", "content": ""}}
    if not req.messages and keep == 0:
        sim.scheduler.expire(name)
        return reply(_empty(req.model, "unload", empty_message))
    capable(req.model, model.spec, "completion", "chat")
    prompt = " ".join(m.content for m in req.messages)
    turn = Turn.plan(sim, prompt, req.options)
    ctx = _num_ctx(req.options)
    async with sim.scheduler.use(name, model.spec, keep, num_ctx=ctx, exclusive=bool(req.messages)):
        turn.loaded()
        if not req.messages:
            return reply(_empty(req.model, "load", empty_message))
        sim.stats.requests[name] += 1
        return await _serve(
            request,
            req.model,
            turn,
            lambda t: {"message": {"role": "assistant", "content": t}},
            {},
            req.stream is not False,
        )


def _num_ctx(options: dict[str, Any] | None) -> int | None:
    """The context length a request asks for, which /api/ps reports once it loads."""
    value = (options or {}).get("num_ctx")
    return value if isinstance(value, int) and value > 0 else None


def _empty(raw: str, reason: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"model": raw, "created_at": _now(), **body, "done": True, "done_reason": reason}


def embedding(model: str, text: str, dimensions: int = 0) -> list[float]:
    """A deterministic unit vector for ``text``: equal texts embed equally."""
    digest = hashlib.sha256(f"{model}\0{text}".encode()).digest()
    raw = [v / 32768 for v in struct.unpack(f"<{EMBED_DIMS}h", digest)]
    if 0 < dimensions < len(raw):
        raw = raw[:dimensions]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


def embed_inputs(value: Any) -> list[str]:
    """``input`` as Ollama accepts it: a string or a list of strings."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise SimError(400, "invalid input type")


async def embed_texts(
    request: web.Request, raw: str, texts: list[str], keep: float | None, dimensions: int
) -> tuple[list[list[float]], Turn]:
    """Load the model (as any inference does) and embed each text."""
    sim = request.app[SIM]
    name, model = sim.installed(raw)
    turn = Turn(sum(len(t.split()) for t in texts), [])
    async with sim.scheduler.use(name, model.spec, keep, exclusive=bool(texts)):
        turn.loaded()
        if texts:
            sim.stats.requests[name] += 1
            await asyncio.sleep(sim.knobs.latency_ms / 1000)
        return [embedding(name, t, dimensions) for t in texts], turn


@routes.post("/api/embed")
async def embed(request: web.Request) -> web.Response:
    req = await decode(request, EmbedRequest)
    texts = embed_inputs(req.input)
    vectors, turn = await embed_texts(
        request, req.model, texts, keep_alive(req.keep_alive), req.dimensions
    )
    if not texts:
        return reply({"model": req.model, "embeddings": []})
    metrics = turn.metrics()
    return reply(
        {
            "model": req.model,
            "embeddings": vectors,
            "total_duration": metrics["total_duration"],
            "load_duration": metrics["load_duration"],
            "prompt_eval_count": turn.prompt_tokens,
        }
    )


@routes.post("/api/embeddings")
async def embed_legacy(request: web.Request) -> web.Response:
    req = await decode(request, EmbeddingsRequest)
    texts = [req.prompt] if req.prompt else []
    vectors, _ = await embed_texts(request, req.model, texts, keep_alive(req.keep_alive), 0)
    return reply({"embedding": vectors[0] if vectors else []})
