"""Prometheus metrics of one coordinator (a registry per app, so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from fleetd.coordinator.registry import REGISTRY


class InFlight(Collector):
    """``fleetd_agent_requests_in_flight{agent}``, read from ``source`` at scrape time: a
    gauge child per agent cost each registration more than the rest of its bookkeeping."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[tuple[str, int]]] = lambda: ()
        """(agent id, requests in flight) of every known agent; set by the gateway's pools."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "fleetd_agent_requests_in_flight", "Requests in flight per agent", labels=["agent"]
        )
        for agent_id, n in self.source():
            family.add_metric([agent_id], n)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.agents = Gauge("fleetd_agents", "Agents by status", ["status"], registry=r)
        self.heartbeats = Counter(
            "fleetd_heartbeats_received", "Heartbeats received from agents", registry=r
        )
        """Brought up to the registry's own count at scrape time, not once per heartbeat."""
        self._heartbeats_counted = 0
        self.http_requests = Counter(
            "fleetd_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self._http_children: dict[tuple[str, int], Counter] = {}
        self.inference_requests = Counter(
            "fleetd_inference_requests",
            "Inference requests by path and outcome",
            ["path", "outcome"],
            registry=r,
        )
        self.inference_latency = Histogram(
            "fleetd_inference_latency_seconds",
            "Time to the first response byte",
            ["path"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "fleetd_gate_queue_depth", "Requests waiting for a ready agent", registry=r
        )
        self.in_flight = InFlight()
        r.register(self.in_flight)

        self.key_requests = Counter(
            "fleetd_key_requests",
            "Inference requests by API key name and model",
            ["key", "model"],
            registry=r,
        )
        self.key_errors = Counter(
            "fleetd_key_errors",
            "Failed or refused inference requests by API key name and model",
            ["key", "model"],
            registry=r,
        )
        self.key_tokens = Counter(
            "fleetd_key_tokens",
            "Tokens by API key name, model and kind (prompt, completion)",
            ["key", "model", "kind"],
            registry=r,
        )

    def count_key_usage(
        self, key: str, model: str, requests: int, errors: int, prompt: int, completion: int
    ) -> None:
        """Added with each usage flush (every few seconds), not per request."""
        self.key_requests.labels(key, model).inc(requests)
        self.key_errors.labels(key, model).inc(errors)
        self.key_tokens.labels(key, model, "prompt").inc(prompt)
        self.key_tokens.labels(key, model, "completion").inc(completion)

    def count_request(self, route: str, status: int) -> None:
        """One request in ``http_requests``; each (route, status) child is looked up once,
        as prometheus_client's ``labels()`` costs more than the increment itself."""
        child = self._http_children.get((route, status))
        if child is None:
            child = self._http_children[(route, status)] = self.http_requests.labels(
                route, str(status)
            )
        child.inc()

    def count_heartbeats(self, total: int) -> None:
        """Bring ``heartbeats`` up to ``total``, the registry's count since start."""
        self.heartbeats.inc(total - self._heartbeats_counted)
        self._heartbeats_counted = total

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


async def serve_metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    registry = request.app[REGISTRY]
    m.count_heartbeats(registry.heartbeats)
    agents = registry.agents.values()
    online = sum(1 for a in agents if a.status == "online")
    initializing = sum(1 for a in agents if a.status == "online" and a.initializing)
    m.agents.labels("online").set(online)
    m.agents.labels("offline").set(len(agents) - online)
    m.agents.labels("initializing").set(initializing)
    return web.Response(body=m.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
