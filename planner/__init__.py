"""Capacity and cost planning: first-principles predictions from model and hardware catalogues."""
