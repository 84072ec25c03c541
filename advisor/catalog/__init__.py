"""Catalogs of GPUs and models the advisor knows by name."""
