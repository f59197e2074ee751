"""The heartbeat-scale baseline: a bare coordinator, agents in a dict and three routes.

It is what any Python coordinator on aiohttp must at least spend per heartbeat (parse,
check the token, update the dict, answer the agent), so ``bench.agents`` judges fleetd's
coordinator by its ratio to this one, driven by the same simulated agents in the same run.
Run ``python -m bench.bare_coordinator --listen 127.0.0.1:0``; tokens come from
``FLEETD_AGENT_TOKEN`` and ``FLEETD_ADMIN_TOKEN`` as for fleetd.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import signal
import sys
import time
import uuid
from typing import Any

import msgspec
from aiohttp import web

from fleetd.core.server import raise_open_files_limit, run

AGENTS = web.AppKey("agents", dict)
"""agent id -> the agent as the latest registration and heartbeat described it."""

SUPPORTED = ["gpt-oss:20b", "gpt-oss:120b", "gpt-oss-safeguard:20b", "qwen3-coder:30b"]


def _authorized(request: web.Request, env: str) -> bool:
    expected = os.environ.get(env, "")
    return hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {expected}")


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(obj), status=status, content_type="application/json"
    )


async def register_agent(request: web.Request) -> web.Response:
    if not _authorized(request, "FLEETD_AGENT_TOKEN"):
        return _json({"error": "unauthorized"}, 401)
    agent = msgspec.json.decode(await request.read())
    agent["id"] = uuid.uuid4().hex[:12]
    agent["status"] = "online"
    agent["last_seen"] = time.time()
    request.app[AGENTS][agent["id"]] = agent
    return _json({**agent, "supported_models": SUPPORTED})


async def agent_heartbeat(request: web.Request) -> web.Response:
    if not _authorized(request, "FLEETD_AGENT_TOKEN"):
        return _json({"error": "unauthorized"}, 401)
    agent = request.app[AGENTS].get(request.match_info["id"])
    if agent is None:
        return _json({"error": "unknown agent"}, 404)
    agent.update(msgspec.json.decode(await request.read()))
    agent["last_seen"] = time.time()
    return _json({**agent, "supported_models": SUPPORTED})


async def list_agents(request: web.Request) -> web.Response:
    if not _authorized(request, "FLEETD_ADMIN_TOKEN"):
        return _json({"error": "unauthorized"}, 401)
    return _json({"agents": list(request.app[AGENTS].values())})


def build_app() -> web.Application:
    app = web.Application()
    app[AGENTS] = {}
    app.router.add_post("/api/agents", register_agent)
    app.router.add_post("/api/agents/{id}/heartbeat", agent_heartbeat)
    app.router.add_get("/api/agents", list_agents)
    return app


async def serve(listen: str) -> int:
    """Serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(build_app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, int(port), backlog=1024).start()
        print(f"bare coordinator listening on http://{host}:{runner.addresses[0][1]}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    args = parser.parse_args()
    raise_open_files_limit()  # as fleetd does: a client per agent holds a socket each
    sys.exit(run(serve(args.listen)))  # uvloop when installed, as fleetd runs


if __name__ == "__main__":
    main()
