"""The ``morpho`` command line. Each system registers its subcommands:

- MorphoNet Pro (`morphonet.masks.cli`): ``compare`` (the main job), ``demo``;
- Structure Net (`morphonet.growth.cli`): ``grow``; second generation
  (`morphonet.evolution.cli`): ``evolve``;
- MorphNet (`morphonet.morph.cli`): ``morph``;
- Autoplastic (`morphonet.autoplastic.cli`): ``autoplastic``;
- Neural Architecture Lab (`morphonet.lab.cli`): ``lab run FILE``;
- speed (`morphonet.speed.cli`): ``speed`` (learned structure → measured speed; latency
  budget).
"""

from __future__ import annotations

import argparse
import sys


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``morpho`` parser with every system's subcommands."""
    from .autoplastic.cli import add_autoplastic_parser
    from .evolution.cli import add_evolve_parser
    from .growth.cli import add_grow_parser
    from .lab.cli import add_lab_parser
    from .masks.cli import add_parsers
    from .morph.cli import add_morph_parser
    from .speed.cli import add_speed_parser

    parser = argparse.ArgumentParser(prog="morpho", description=__doc__)
    parser.set_defaults(argv=argv)
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    add_grow_parser(sub)
    add_evolve_parser(sub)
    add_morph_parser(sub)
    add_autoplastic_parser(sub)
    add_lab_parser(sub)
    add_speed_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``morpho`` with ``argv`` (default: the command line); returns the exit status."""
    args = build_parser(argv).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
