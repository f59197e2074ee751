"""Distribution policy as pure functions: which agents get a new download task for a model,
and what the agents × models matrix shows. No I/O and no state: the routes and the automatic
distribution hand in what the registry, the inventory and the task table know, and act on
the answer."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fleetd.core.wire import Agent, Task

IfInstalled = Literal["warn", "skip", "redownload"]
IfOffline = Literal["fail", "retry-when-online"]
IF_INSTALLED: tuple[IfInstalled, ...] = ("warn", "skip", "redownload")
IF_OFFLINE: tuple[IfOffline, ...] = ("fail", "retry-when-online")

MatrixState = Literal["installed", "downloading", "queued", "failed", "missing"]

Notice = dict[str, str]
"""A warning or an error as the API shows it: ``code``, ``message``, often ``agent_id``."""


@dataclass
class Plan:
    create: list[Agent] = field(default_factory=list)
    """Agents that get a new task, in the order given (``redownload`` tells how)."""
    under_way: list[Task] = field(default_factory=list)
    """Unfinished tasks for the model already there: followed, not ordered twice."""
    installed: list[Agent] = field(default_factory=list)
    """Agents left alone because they have the model."""
    warnings: list[Notice] = field(default_factory=list)
    errors: list[Notice] = field(default_factory=list)
    redownload: bool = False
    wanted: bool = False
    """Some agent lacks the model with no task under way (whether or not it gets one now):
    worth asking the registry whether the model exists before ordering."""


def plan(
    model: str,
    agents: Sequence[Agent],
    *,
    active: Mapping[str, Task],
    holders: Collection[str],
    if_installed: IfInstalled = "warn",
    if_offline: IfOffline = "fail",
) -> Plan:
    """What to do for ``model`` on each of ``agents``, given the unfinished task per agent id
    (``active``) and the ids of the agents that have it installed (``holders``).

    An unfinished task is never doubled. An installed model is downloaded again only with
    ``redownload`` (``warn`` says so, ``skip`` is silent). An offline agent is refused with
    ``fail``; with ``retry-when-online`` its task waits for it.
    """
    p = Plan(redownload=if_installed == "redownload")
    for agent in agents:
        running = active.get(agent.id)
        if running is not None:
            p.under_way.append(running)
            p.warnings.append(
                {
                    "agent_id": agent.id,
                    "code": "already_in_progress",
                    "task_id": running.id,
                    "message": f"{model} is already {running.status} on agent {agent.name}",
                }
            )
            continue
        if agent.id in holders and not p.redownload:
            p.installed.append(agent)
            if if_installed == "warn":
                p.warnings.append(
                    {
                        "agent_id": agent.id,
                        "code": "already_installed",
                        "message": f"{model} is already installed on agent {agent.name}; "
                        'send if_installed "skip" or "redownload" to choose',
                    }
                )
            continue
        p.wanted = True
        if agent.status != "online" and if_offline == "fail":
            p.errors.append(
                {
                    "agent_id": agent.id,
                    "code": "agent_offline",
                    "message": f"agent {agent.name} ({agent.id}) is offline; send if_offline "
                    '"retry-when-online" to download when it is back',
                }
            )
            continue
        p.create.append(agent)
    return p


def matrix(
    agents: Iterable[Agent],
    supported: Sequence[str],
    tasks: Iterable[Task],
    installed: Mapping[str, Collection[str]],
) -> tuple[list[str], list[dict[str, object]]]:
    """The model names (supported first, then any other one an agent has or gets, sorted) and
    one row per agent with the state of each model there.

    The latest task of an (agent, model) pair decides while it runs (``downloading``;
    ``queued`` also for ``waiting``); then an installed model is ``installed``, else a failed
    last task is ``failed``, else ``missing``.
    """
    latest: dict[tuple[str, str], Task] = {}
    for task in sorted(tasks, key=lambda t: t.created_at):
        latest[(task.agent_id, task.model)] = task
    others = {m for models in installed.values() for m in models}
    others |= {model for _, model in latest}
    names = list(supported) + sorted(others - set(supported))
    rows: list[dict[str, object]] = []
    for a in agents:
        has = installed.get(a.id, ())
        states: dict[str, MatrixState] = {}
        for m in names:
            t = latest.get((a.id, m))
            state: MatrixState = "missing"
            if t is not None and t.status == "downloading":
                state = "downloading"
            elif t is not None and t.status in ("queued", "waiting"):
                state = "queued"
            elif m in has:
                state = "installed"
            elif t is not None and t.status == "failed":
                state = "failed"
            states[m] = state
        rows.append({"id": a.id, "name": a.name, "status": a.status, "models": states})
    return names, rows
