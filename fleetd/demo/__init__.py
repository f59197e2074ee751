"""``fleetd demo``: a whole fleet on one machine — a coordinator and a few agents on simulated
GPUs, each in front of its own ``fleetd sim-ollama`` — so a newcomer sees the product work.

Every piece is the real program started as a child process, on port 0, found by the
``listening on URL`` line it logs. Model sizes are the real ones scaled down and downloads are
throttled, so the dashboard shows tens of seconds of progress before the first agent is ready.
"""

from fleetd.demo.cli import BANDWIDTH_BPS, demo, parse_speed

__all__ = ["BANDWIDTH_BPS", "demo", "parse_speed"]
