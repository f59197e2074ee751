"""Allows ``python -m fleetd`` (and a pex entry point) to behave like the ``fleetd`` script.

``-m`` puts the current folder first on ``sys.path``. Run from a folder holding a ``fleetd/``
directory (a clone's parent) with fleetd installed in editable mode, ``fleetd`` is that folder
while this file is the real package's: import the package from here instead. Where Python
stops before this file runs (a ``fleetd/`` with its own ``__init__.py``), the ``fleetd``
command, ``python -P -m fleetd`` (3.11+) or another folder avoids it (docs/troubleshooting.md).
"""

import sys
from pathlib import Path

import fleetd


def _unshadow() -> None:
    here = Path(__file__).resolve().parent
    mine = getattr(fleetd, "__file__", None)
    if mine is not None and Path(mine).resolve().parent == here:
        return
    shadow = {"", str(Path.cwd())}
    sys.path[:] = [str(here.parent), *(p for p in sys.path if p not in shadow)]
    for name in [m for m in sys.modules if m == "fleetd" or m.startswith("fleetd.")]:
        del sys.modules[name]


_unshadow()

from fleetd.cli import main  # noqa: E402  (after _unshadow, on purpose)

main()
