"""The ``fleetd ctl`` group: every operator command, gathered under one name."""

from __future__ import annotations

import click

from fleetd.ctl.access import keys, supported, usage
from fleetd.ctl.agents import agents, drain, remove, undrain
from fleetd.ctl.base import common
from fleetd.ctl.tasks import distribute, tasks


@click.group("ctl")
@common
def ctl() -> None:
    """Operate a running fleet over the coordinator's admin API.

    The admin token comes from FLEETD_ADMIN_TOKEN, else from the admin_token file in the
    coordinator's data_dir (on its host). Agents are named by name or id (a unique prefix
    will do). Every command takes --json for scripts; errors are one line and exit 1.
    """


for command in (agents, tasks, distribute, drain, undrain, remove, keys, usage, supported):
    ctl.add_command(command)
