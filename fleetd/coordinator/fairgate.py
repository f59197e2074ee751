"""The gate's wait queue, fair across API keys: one queue per key, served round-robin.

Without it, waiting requests were served in arrival order, so a key sending ten times as many
requests as another took ten of every eleven free slots, and the other waited behind its
whole backlog. Here each key with a servable request gets one slot per turn; within a key,
requests keep their arrival order. A key that was served moves to the end of the turn, so
the keys still waiting go first next time; a key that had nothing waiting joins at the front
(as a new flow does in fq_codel): a light key's request is next, not behind a flood's turn.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable

Waiter = tuple[str, str, "asyncio.Future[str]"]
"""(key id, model, future resolved with the agent chosen)."""


class FairQueue:
    def __init__(self) -> None:
        self._by_key: OrderedDict[str, deque[Waiter]] = OrderedDict()
        """Key id -> its waiters in arrival order; the dict's order is the turn order."""
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, key: str, model: str, fut: asyncio.Future[str]) -> Waiter:
        w = (key, model, fut)
        q = self._by_key.get(key)
        if q is None:
            q = self._by_key[key] = deque()
            self._by_key.move_to_end(key, last=False)
        q.append(w)
        self._n += 1
        return w

    def discard(self, w: Waiter) -> bool:
        q = self._by_key.get(w[0])
        if q is None:
            return False
        try:
            q.remove(w)
        except ValueError:
            return False
        self._n -= 1
        if not q:
            del self._by_key[w[0]]
        return True

    def clear(self) -> list[asyncio.Future[str]]:
        """Empty the queue; the futures of the requests that were waiting."""
        futs = [fut for q in self._by_key.values() for _, _, fut in q]
        self._by_key.clear()
        self._n = 0
        return futs

    def serve(self, pick: Callable[[str], str | None]) -> None:
        """Hand out agents while ``pick(model)`` finds one: a turn gives each key at most
        one, turns repeat until one gives nothing. A model ``pick`` found no agent for is not
        asked again in the same call."""
        blocked: set[str] = set()
        progress = True
        while progress and self._by_key:
            progress = False
            for key in list(self._by_key):
                q = self._by_key[key]
                served = self._serve_one(q, pick, blocked)
                if not q:
                    del self._by_key[key]
                elif served:
                    self._by_key.move_to_end(key)
                progress = progress or served

    def _serve_one(
        self, q: deque[Waiter], pick: Callable[[str], str | None], blocked: set[str]
    ) -> bool:
        i = 0
        while i < len(q):
            _, model, fut = q[i]
            if fut.done():  # its client left or its wait ended
                del q[i]
                self._n -= 1
                continue
            if model not in blocked:
                agent_id = pick(model)
                if agent_id is not None:
                    del q[i]
                    self._n -= 1
                    fut.set_result(agent_id)
                    return True
                blocked.add(model)
            i += 1
        return False
