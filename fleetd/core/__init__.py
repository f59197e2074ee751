"""Pieces both roles use: store, events, wire formats, plugins, HTTP plumbing. No routes."""
