"""The coordinator never talks to itself: an agent URL that points back at it is refused at
registration, and a request it sent that comes back to it is refused instead of fanned out.

Each coordinator process has a random instance id. It names itself with it in the
``X-Fleetd-Coordinator`` header of every response it sends and of every request it sends
(the shared ClientSession's default headers); a forwarded inference request carries the ids
of every coordinator it went through, comma-separated. A request that arrives carrying our
own id is a loop: answered 508 ``loop_detected``, never forwarded again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import uuid
from urllib.parse import urlsplit

from aiohttp import web

from fleetd.coordinator.settings import SETTINGS
from fleetd.core.errors import ApiError
from fleetd.core.server import split_listen

log = logging.getLogger("fleetd.loops")

HEADER = "X-Fleetd-Coordinator"
MAX_HOPS = 8
"""A request that went through more coordinators than this is refused as a loop too."""

SELF_ID = web.AppKey("coordinator_instance_id", str)

_WILDCARD = frozenset({"", "0.0.0.0", "::"})
_RESOLVE_TIMEOUT_S = 2.0


def new_instance_id() -> str:
    return uuid.uuid4().hex


def _chain(request: web.Request) -> list[str]:
    return [i.strip() for v in request.headers.getall(HEADER, ()) for i in v.split(",")]


def forward_mark(request: web.Request, self_id: str) -> str:
    """The header value of a request forwarded on behalf of ``request``: its chain plus us
    (``self_id``), or just us for a client's request (the usual case, so not parsed)."""
    if HEADER not in request.headers:
        return self_id
    return ", ".join([*_chain(request)[:MAX_HOPS], self_id])


def refuse_loop(request: web.Request) -> None:
    """508 for a request this coordinator sent that came back to it (the caller checks first
    that it carries ``HEADER`` at all: a client's request does not)."""
    chain = _chain(request)
    if request.app[SELF_ID] in chain or len(chain) > MAX_HOPS:
        log.warning(
            "refused %s %s from %s: it came back to this coordinator (an agent URL points "
            "at the coordinator itself?)",
            request.method,
            request.path,
            request.remote,
        )
        raise ApiError(
            508,
            "loop_detected",
            "this request was sent by this coordinator and came back to it: an agent's URL "
            "points at the coordinator itself (check the agents' advertise_url)",
        )


async def stamp(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer says which coordinator gave it."""
    response.headers[HEADER] = request.app[SELF_ID]


def _is_local(ip: str) -> bool:
    """An address is this host's own exactly when a socket can be bound to it."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    if addr.is_loopback or addr.is_unspecified:
        return True
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((ip, 0))
        except OSError:
            return False
    return True


async def refuse_self(request: web.Request, url: str, port: int) -> None:
    """400 ``agent_url_is_coordinator`` when ``url`` (a valid one, to ``port``) reaches this
    coordinator: same port as the one the registration came in on, and a host that is this
    machine (any local address when the coordinator listens on a wildcard address, else its
    listen address)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname or port != sockname[1]:
        return
    parts = urlsplit(url)
    if not parts.hostname:
        return
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM),
            _RESOLVE_TIMEOUT_S,
        )
    except (OSError, asyncio.TimeoutError):
        return  # unresolvable here: not us (the loop guard still catches a loop)
    ips = {str(info[4][0]) for info in infos}
    listen_host = split_listen(request.app[SETTINGS].listen)[0]
    if listen_host in _WILDCARD:
        mine = any(_is_local(ip) for ip in ips)
    else:
        mine = sockname[0] in ips
    if mine:
        raise ApiError(
            400,
            "agent_url_is_coordinator",
            f"url: {url!r} is this coordinator's own address; set the agent's advertise_url "
            "to the address where the agent itself listens",
        )
