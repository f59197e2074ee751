"""Connections cannot lock clients out: unfinished headers and idle keep-alive connections are
closed after ``keepalive_timeout_s``, and the open-files limit is raised at start."""

from __future__ import annotations

import re
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Fleet


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.settimeout(30)
    return s


def test_unfinished_headers_and_idle_connections_are_closed(fleet: Fleet) -> None:
    coord = fleet.coordinator(keepalive_timeout_s=1)
    half_open = [_connect(coord.url) for _ in range(20)]
    for s in half_open:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert httpx.get(coord.url + "/healthz").status_code == 200
    for s in half_open:
        with s:
            assert s.recv(100) == b"", "the server closes a connection whose headers never end"
    with _connect(coord.url) as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while not reply.endswith(b'{"status":"ok"}'):
            reply += idle.recv(1000)
        assert reply.startswith(b"HTTP/1.1 200")
        assert idle.recv(100) == b"", "an idle keep-alive connection is closed too"


@pytest.fixture
def soft_1024() -> Iterator[int]:
    """Children start with a soft open-files limit of 1024 (the usual default)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip("the hard open-files limit is 1024 or less: nothing to raise to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(fleet: Fleet, soft_1024: int) -> None:
    sim = fleet.sim()
    coord = fleet.coordinator()
    agent = fleet.agent(coord.url, sim.url)
    for proc in (coord, agent):
        proc.wait_for_line(r"open-files limit raised from 1024 to \d+")
        limits = Path(f"/proc/{proc.popen.pid}/limits").read_text()
        m = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits)
        assert m and m.group(1) == m.group(2), limits
