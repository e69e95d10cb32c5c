"""The ``baichuan`` command: one subcommand per module, each a thin layer over importable functions."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Subcommand name -> module of this package. Each module has HELP, add_arguments(parser) and run(args).
SUBCOMMANDS = {
    "chat": "chat",
    "generate": "generate",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baichuan",
        description="Baichuan-13B / Baichuan-7B in pure PyTorch: chat, generate and more, no remote code.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"baichuan13b {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``baichuan`` console command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as e:
        # Configuration and input errors: one clear line, no traceback (CheckpointError is a ValueError).
        print(f"baichuan {args.command}: error: {e}", file=sys.stderr)
        return 2
