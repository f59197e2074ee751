"""What coordinators sharing PostgreSQL announce on NOTIFY: the channel and its payloads."""

from __future__ import annotations

import msgspec

CHANGES = "fleetd_changes"
"""The NOTIFY channel on which coordinators sharing the database announce what they wrote."""
NOTIFY_MAX = 7000
"""PostgreSQL refuses payloads of 8000 bytes or more; longer id lists go in several."""


class Change(msgspec.Struct, omit_defaults=True):
    """One NOTIFY payload: who wrote (``o``rigin), what kind of rows and which ids. Kinds:
    ``a`` agents (an id whose row is gone: removed), ``t`` tasks, ``i`` installed models (by
    agent id), ``c`` contacts, ``k`` key-value entries (by key: the supported list...)."""

    o: str
    k: str
    ids: list[str]


def change_payloads(origin: str, kind: str, ids: list[str]) -> list[str]:
    """``ids`` split into payloads each under PostgreSQL's limit."""
    out: list[str] = []
    chunk: list[str] = []
    size = 0
    for i in ids:
        if chunk and size + len(i) + 3 > NOTIFY_MAX:
            out.append(msgspec.json.encode(Change(o=origin, k=kind, ids=chunk)).decode())
            chunk, size = [], 0
        chunk.append(i)
        size += len(i) + 3
    if chunk:
        out.append(msgspec.json.encode(Change(o=origin, k=kind, ids=chunk)).decode())
    return out
