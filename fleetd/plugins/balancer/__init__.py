"""Built-in balancers (``fleetd.balancer``): ``least-busy`` and ``round-robin``."""
