"""The agent role: registration, heartbeats, downloads, residency, inference over local Ollama."""
