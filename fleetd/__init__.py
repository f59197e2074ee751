"""fleetd: one daemon that turns GPU hosts running Ollama into one managed inference fleet."""

__version__ = "0.1.0"
