"""How the registry's agents reach the store: registrations in shared writes, other changes
marked and flushed later.

A registration is answered only once its agent is written (503 ``store_unavailable`` when
the store cannot: an agent told it is registered must still be known after a restart), but it
does not wait for a write of its own. The first registration starts a write; every one that
arrives while it is under way joins the next (group commit), so a fleet registering at once
costs a few transactions, not one per agent. The group shares one transaction, so a write
that fails fails every registration of its group with the store's reason (they stay known in
memory and dirty, for the next flush); the next group is a write of its own.

Each group written logs one line: the agent's own when it was alone, else one naming every
agent of the group (name, id, URL), so that a search of the log for an agent still finds when
it registered, without a log record per agent (a record per agent was a fifth of the event
loop's time in a burst of 5,000).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from fleetd.core.background import Jobs
from fleetd.core.store import Store
from fleetd.core.wire import Agent

log = logging.getLogger("fleetd.registry")


class AgentRows:
    def __init__(self, store: Store, jobs: Jobs) -> None:
        self.store = store
        self.jobs = jobs
        self.dirty: set[str] = set()
        """Agents whose row must be written again by the next ``flush``."""
        self._group: dict[str, Agent] = {}
        """Registered agents waiting for the write under way to end, to go in the next one."""
        self._written: asyncio.Future[None] | None = None
        """Settled when the write that takes ``_group`` is done."""
        self._writing = False

    async def registered(self, a: Agent) -> None:
        """Return once ``a`` is written, in a write shared with every registration that
        arrives meanwhile; raise what the store raised when it cannot write."""
        self._group[a.id] = a
        if self._written is None:
            self._written = asyncio.get_running_loop().create_future()
            if not self._writing:
                self._writing = True
                self.jobs.spawn(self._write_groups(), name="registry-write")
        # Shielded: a client that hangs up does not stop the write the others wait for.
        await asyncio.shield(self._written)

    async def _write_groups(self) -> None:
        """One write at a time; the registrations that arrive meanwhile go in the next."""
        try:
            while self._written is not None:
                done, group = self._written, list(self._group.values())
                self._written, self._group = None, {}
                try:
                    await self.store.save_agents(group)
                except Exception as e:
                    # Known in memory already: the next working flush saves them.
                    self.dirty.update(a.id for a in group)
                    done.set_exception(e)
                    done.exception()  # retrieved: the registrations waiting answer with it
                else:
                    self.dirty.difference_update(a.id for a in group)
                    _log_registered(group)
                    done.set_result(None)
        finally:
            self._writing = False

    async def flush(self, agents: Mapping[str, Agent]) -> None:
        """Write the dirty agents still in ``agents``."""
        if not self.dirty:
            return
        batch = [agents[i] for i in self.dirty if i in agents]
        self.dirty.clear()
        try:
            await self.store.save_agents(batch)
        except BaseException:
            # Not lost: the next flush writes them again with whatever changed since.
            self.dirty.update(a.id for a in batch)
            raise


def _log_registered(group: list[Agent]) -> None:
    if len(group) == 1:
        a = group[0]
        log.info("agent %s (%s) registered at %s with %d GPU(s)", a.name, a.id, a.url, len(a.gpus))
    else:
        names = ", ".join(f"{a.name} ({a.id}) at {a.url}" for a in group)
        log.info("%d agents registered: %s", len(group), names)
