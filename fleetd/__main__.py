"""Allows ``python -m fleetd`` (and a pex entry point) to behave like the ``fleetd`` script."""

from fleetd.cli import main

main()
