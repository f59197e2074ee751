"""The demo fleet: simulated GPU hosts, each an agent in front of its own ``fleetd
sim-ollama``, and a coordinator; their configs, start order, readiness reports and stop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path
from typing import NamedTuple

import aiohttp
import click
import msgspec

from fleetd.config import DEFAULT_SUPPORTED_MODELS
from fleetd.core.server import split_listen
from fleetd.demo.banner import banner
from fleetd.demo.processes import STOP_TIMEOUT_S, Child, DemoError, wait_stopped

SIZE_SCALE = 0.01
"""Real sizes x 0.01: gpt-oss:120b is 654 MB, so the real disk check passes on a laptop."""
DEFAULT_LISTEN = "127.0.0.1:8080"
POLL_S = 1.0


class Host(NamedTuple):
    """A simulated GPU host; ``pace`` scales its download speed so agents finish in turn."""

    name: str
    gpu: str
    memory_bytes: int
    gpu_count: int
    pace: float


# Memory as nvidia-smi reports it (MiB x 2**20).
HOSTS = (
    Host("h100", "NVIDIA H100 80GB HBM3", 81_559 * 2**20, 1, 1.0),
    Host("a100", "NVIDIA A100-SXM4-40GB", 40_960 * 2**20, 2, 0.75),
    Host("l40s", "NVIDIA L40S", 46_068 * 2**20, 1, 0.55),
)


class _AgentView(msgspec.Struct):
    name: str
    status: str = "online"
    ready_models: int = 0
    total_models: int = 0


class _AgentList(msgspec.Struct):
    agents: list[_AgentView]


def _toml(value: str) -> str:
    """A TOML string: JSON's escaping is valid for TOML basic strings."""
    return msgspec.json.encode(value).decode()


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _make_dirs(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)


def _port_free(listen: str) -> bool:
    host, port = split_listen(listen)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class Demo:
    """Starts the fleet, reports readiness until a signal, then stops every child."""

    def __init__(
        self,
        agents: int,
        bandwidth_bps: float,
        listen: str,
        data_dir: Path,
        keep: bool,
        library_url: str | None,
    ) -> None:
        self.agents = agents
        self.bandwidth_bps = bandwidth_bps
        self.listen = listen
        self.data_dir = data_dir
        self.keep = keep
        self.library_url = library_url
        self.children: list[Child] = []
        self.started = time.monotonic()

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, args, env or {}, self.data_dir / "logs" / f"{name}.log")
        self.children.append(child)
        return child

    def _say(self, text: str) -> None:
        click.echo(f"[{time.monotonic() - self.started:5.0f}s] {text}")

    async def run(self) -> None:
        """Start everything, then watch until cancelled; DemoError when something fails."""
        hosts = [HOSTS[i % len(HOSTS)] for i in range(self.agents)]
        names = [
            f"{h.name}-{i // len(HOSTS) + 1}" if self.agents > len(HOSTS) else h.name
            for i, h in enumerate(hosts)
        ]
        dirs = ["logs", *(f"ollama-{n}" for n in names)]
        await asyncio.to_thread(_make_dirs, self.data_dir, dirs)
        sims = [self._start_sim(n, h) for n, h in zip(names, hosts, strict=True)]
        sim_urls = await asyncio.gather(*(s.wait_url() for s in sims))
        coordinator = await self._start_coordinator(sim_urls[0], self.library_url or sim_urls[0])
        admin_token, agent_token = await asyncio.to_thread(self._tokens)
        agent_procs = [
            await self._start_agent(n, h, url, coordinator.url, agent_token)
            for n, h, url in zip(names, hosts, sim_urls, strict=True)
        ]
        await asyncio.gather(*(a.wait_url() for a in agent_procs))
        click.echo(banner(coordinator.url, admin_token, self.agents, self.data_dir / "logs"))
        await self._watch(coordinator.url, admin_token)

    def _start_sim(self, name: str, host: Host) -> Child:
        vram = host.memory_bytes * host.gpu_count
        # With --data-dir, models survive a restart of the demo, as on a real host.
        state = ["--state-dir", str(self.data_dir / f"ollama-{name}")] if self.keep else []
        return self._spawn(
            f"sim-{name}",
            [
                "sim-ollama",
                "--listen",
                "127.0.0.1:0",
                "--size-scale",
                str(SIZE_SCALE),
                "--bandwidth",
                str(int(self.bandwidth_bps * host.pace)),
                "--vram",
                str(vram),
                "--max-loaded-models",
                str(len(DEFAULT_SUPPORTED_MODELS) + 2),
                "--load-ms",
                "800",
                *state,
            ],
        )

    async def _start_coordinator(self, registry_url: str, library_url: str) -> Child:
        listen = self.listen
        if listen == DEFAULT_LISTEN and not await asyncio.to_thread(_port_free, listen):
            self._say(f"{listen} is busy; the coordinator takes a free port instead")
            listen = "127.0.0.1:0"
        config = self.data_dir / "coordinator.toml"
        text = (
            "[coordinator]\n"
            f"listen = {_toml(listen)}\n"
            f"data_dir = {_toml(str(self.data_dir / 'coordinator'))}\n"
            f"library_url = {_toml(library_url)}\n"
            f"registry_url = {_toml(registry_url)}\n"
        )
        await asyncio.to_thread(_write, config, text)
        child = self._spawn("coordinator", ["--role", "coordinator", "--config", str(config)])
        await child.wait_url()
        return child

    def _tokens(self) -> tuple[str, str]:
        """The tokens the coordinator uses: from the environment, or the files it wrote."""

        def token(var: str, file: str) -> str:
            path = self.data_dir / "coordinator" / file
            return os.environ.get(var) or path.read_text(encoding="utf-8").strip()

        return token("FLEETD_ADMIN_TOKEN", "admin_token"), token(
            "FLEETD_AGENT_TOKEN", "agent_token"
        )

    async def _start_agent(
        self, name: str, host: Host, sim_url: str, coordinator_url: str, agent_token: str
    ) -> Child:
        agent_dir = self.data_dir / f"agent-{name}"
        models_dir = self.data_dir / f"ollama-{name}"
        device = (
            f"[[agent.gpu.devices]]\nname = {_toml(host.gpu)}\nmemory_bytes = {host.memory_bytes}\n"
        )
        text = (
            "[agent]\n"
            f"name = {_toml('demo-' + name)}\n"
            f"coordinator_url = {_toml(coordinator_url)}\n"
            'listen = "127.0.0.1:0"\n'
            f"data_dir = {_toml(str(agent_dir))}\n"
            f"registry_url = {_toml(sim_url)}\n"
            "heartbeat_interval_s = 2\n"
            f"disk_margin_bytes = {int(2e9 * SIZE_SCALE)}\n"
            "[[agent.ollama]]\n"
            f"url = {_toml(sim_url)}\n"
            f"models_dir = {_toml(str(models_dir))}\n"
            '[agent.gpu]\nprobe = "static"\n' + device * host.gpu_count
        )
        config = self.data_dir / f"agent-{name}.toml"
        await asyncio.to_thread(_write, config, text)
        return self._spawn(
            f"agent-{name}",
            ["--role", "agent", "--config", str(config)],
            {"FLEETD_AGENT_TOKEN": agent_token},
        )

    async def _watch(self, url: str, admin_token: str) -> None:
        """Print readiness changes; fail as soon as a child dies on its own."""
        shown: dict[str, tuple[str, int, int]] = {}
        headers = {"Authorization": f"Bearer {admin_token}"}
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            while True:
                for child in self.children:
                    if child.popen.poll() is not None:
                        raise DemoError(
                            f"{child.name} exited with code {child.popen.returncode} "
                            f"(log: {child.log_path}):\n{await asyncio.to_thread(child.tail)}"
                        )
                try:
                    async with session.get(f"{url}/api/agents") as resp:
                        agents = msgspec.json.decode(await resp.read(), type=_AgentList).agents
                except (aiohttp.ClientError, asyncio.TimeoutError, msgspec.DecodeError):
                    agents = []  # the coordinator's own log says why; the next round retries
                for a in agents:
                    now = (a.status, a.ready_models, a.total_models)
                    if shown.get(a.name) != now and a.total_models:
                        if a.status != "online":
                            self._say(f"{a.name}: {a.status}")
                        elif a.ready_models == a.total_models:
                            self._say(f"{a.name}: ready ({a.ready_models}/{a.total_models} models)")
                        else:
                            self._say(f"{a.name}: {a.ready_models}/{a.total_models} models ready")
                        shown[a.name] = now
                await asyncio.sleep(POLL_S)

    async def stop(self) -> None:
        """SIGTERM agents first (they hold connections to the rest), then the others."""
        agents = [c for c in self.children if c.name.startswith("agent-")]
        others = [c for c in self.children if c not in agents]
        for group in (agents, others):
            for c in group:
                if c.popen.poll() is None:
                    c.popen.send_signal(signal.SIGTERM)
            await asyncio.gather(*(asyncio.to_thread(wait_stopped, c.popen) for c in group))
        for c in self.children:
            if c.popen.poll() is None:
                click.echo(f"{c.name} did not stop within {STOP_TIMEOUT_S:.0f}s; killing it")
                c.popen.kill()
                await asyncio.to_thread(c.popen.wait)
            c.close()
