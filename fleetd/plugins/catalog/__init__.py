"""Built-in model catalogs: ``ollama-library``, the public library at ollama.com."""
