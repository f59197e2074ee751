"""The coordinator role: agent registry, distribution, inference gateway, dashboard API."""
