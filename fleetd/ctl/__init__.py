"""``fleetd ctl``: the operator's command line over the coordinator's admin API."""
