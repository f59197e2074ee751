"""What the demo prints once its fleet is up: where everything is, how to point unchanged
Ollama and OpenAI clients at it, and which models there are to try."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from fleetd.config import DEFAULT_SUPPORTED_MODELS
from fleetd.sim.options import DEFAULT_MODELS


def _keys_line() -> str:
    if os.environ.get("FLEETD_API_KEYS", "").strip():
        return "on (FLEETD_API_KEYS): send one as Authorization: Bearer <key>"
    # The OpenAI SDKs refuse to start without a key, although the fleet asks for none.
    return "off: any key works, e.g. OPENAI_API_KEY=anything (OpenAI SDKs insist on one)"


def banner(url: str, admin_token: str, agents: int, logs: Path) -> str:
    model = DEFAULT_SUPPORTED_MODELS[0]
    body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
    others = [m for m in DEFAULT_MODELS if m not in DEFAULT_SUPPORTED_MODELS]
    registry = textwrap.fill(
        f"supported (every agent downloads and keeps them resident): "
        f"{', '.join(DEFAULT_SUPPORTED_MODELS)}; more to distribute from the dashboard's "
        f"catalog: {', '.join(others)}.",
        width=92,
        initial_indent="  ",
        subsequent_indent="  ",
        break_on_hyphens=False,
    )
    return (
        f"\nfleetd demo: a coordinator and {agents} agent(s) on simulated GPUs, each "
        "with a simulated Ollama.\n\n"
        f"  Dashboard:    {url}/?token={admin_token}\n"
        f"  Admin token:  {admin_token}\n"
        f"  OpenAI API:   {url}/v1   (OPENAI_BASE_URL={url}/v1)\n"
        f"  Ollama API:   OLLAMA_HOST={url}\n"
        f"  API keys:     {_keys_line()}\n"
        f"  Logs:         {logs}\n\n"
        f"Models in the simulated registry:\n{registry}\n\n"
        "Each agent now downloads the supported models and keeps them resident; the first "
        "should be ready in about a minute. Then try:\n"
        f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f"       -d '{body}'\n"
        f"  OLLAMA_HOST={url} ollama run {model} Hello!\n"
        "\n"
        "Press Ctrl-C to stop.\n"
    )
