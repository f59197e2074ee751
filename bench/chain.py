"""The proxy benchmark's ceiling: a minimal aiohttp pass-through hop, nothing else.

Method, path, headers and body bytes go upstream as they came (hop-by-hop headers and Host
aside); the reply comes back with its status and headers, read whole when it has a length and
chunk by chunk otherwise. One ClientSession, uvloop when installed. Two of these in a row are
the "minimal chain" that ``bench.proxy`` compares fleetd's coordinator + agent with.

    python -m bench.chain --listen 127.0.0.1:0 --upstream http://127.0.0.1:11434
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from fleetd.core.server import run, serve, setup_logging

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)
_SKIP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}
)


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _SKIP]
    url = request.app[UPSTREAM] + request.path_qs
    async with request.app[SESSION].request(
        request.method, url, data=body, headers=headers
    ) as upstream:
        out_headers = [
            (k, v)
            for k, v in upstream.headers.items()
            if k.lower() not in _SKIP and k.lower() != "content-encoding"
        ]
        if upstream.content_length is not None:
            return web.Response(
                status=upstream.status, body=await upstream.read(), headers=out_headers
            )
        resp = web.StreamResponse(status=upstream.status, headers=out_headers)
        await resp.prepare(request)
        async for chunk in upstream.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


def build_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=8 << 20)
    app[UPSTREAM] = upstream.rstrip("/")

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=512, limit_per_host=0)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None)
        ) as s:
            app[SESSION] = s
            yield

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.chain", description=__doc__)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--upstream", required=True)
    args = p.parse_args()
    setup_logging()
    sys.exit(run(serve(build_app(args.upstream), args.listen, "chain hop")))


if __name__ == "__main__":
    main()
