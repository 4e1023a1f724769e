"""canteen-county directory commands (being built; see docs/settlement.md)."""

from __future__ import annotations

import argparse
from typing import Any


def add_directory_commands(sub: Any) -> None:
    """Register this module's commands on the county CLI's subparsers."""
    del sub


__all__ = ["add_directory_commands", "argparse"]
