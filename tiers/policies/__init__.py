"""Eviction, placement and promotion policies; new ones plug in through ``register``."""
