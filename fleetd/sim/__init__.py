"""sim-ollama: a faithful simulator of an Ollama server (and of its model registry).

No real Ollama can run where fleetd is tested, so this package reproduces the behaviour
of a real Ollama server — pull streams, residency, eviction, errors — closely enough
that code passing against it is right against the real server. Entry points:
``build_app(SimOptions(...))`` in server.py and the ``sim_ollama`` click command in cli.py.
"""
