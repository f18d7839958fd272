"""What every system's subcommand module shares: the check of the ``subparsers`` it registers
on, and running one subcommand standalone (``python -m morphonet.<system>.cli <command>``).
The ``morpho`` parser itself is `morphonet.cli.build_parser`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, Optional

__all__ = ["add_command", "standalone"]


def add_command(subparsers: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """``subparsers.add_parser(name, **kwargs)``, with a ``TypeError`` when ``subparsers`` is
    not what ``ArgumentParser.add_subparsers()`` returns."""
    if not hasattr(subparsers, "add_parser"):
        raise TypeError("subparsers must be the object returned by add_subparsers()")
    return subparsers.add_parser(name, **kwargs)


def standalone(add_parser: Callable[[Any], argparse.ArgumentParser],
               argv: Optional[list[str]] = None, description: Optional[str] = None) -> int:
    """Parse ``argv`` with a ``morpho`` parser holding only the subcommand ``add_parser``
    registers, run it, return its exit status."""
    parser = argparse.ArgumentParser(prog="morpho", description=description)
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
