"""Canteen one-card terminal: the daemon on each canteen device."""
