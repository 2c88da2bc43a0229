"""Command-line entry points: `toolken-plus` (commands.py) and run comparison tables (compare.py)."""

from toolken_plus.cli.commands import main

__all__ = ["main"]
