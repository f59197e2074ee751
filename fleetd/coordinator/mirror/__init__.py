"""The coordinator as a registry mirror: agents' Ollama pull from it, it fetches each blob
from ``registry_url`` once (cache, fetcher, service, routes; docs/architecture.md)."""
