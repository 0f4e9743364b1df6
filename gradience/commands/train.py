"""Sub-commands of this stage (registered by gradience.cli)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Add this stage's sub-commands to ``commands``."""
