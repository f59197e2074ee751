"""Built-in GPU probes: nvml, static, none, and auto (the first that finds a GPU)."""
