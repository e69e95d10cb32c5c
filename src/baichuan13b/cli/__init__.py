"""The ``baichuan`` command: one subcommand per module, each a thin layer over importable functions."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from .common import HelpFormatter, in_typed_spelling, normalize_argv, plain_text

# Subcommand name -> module of this package. Each module has HELP, add_arguments(parser) and run(args).
SUBCOMMANDS = {
    "chat": "chat",
    "generate": "generate",
    "serve": "serve",
    "bench": "bench",
    "train-demo": "train_demo",
    "eval": "evaluate",
    "quantize": "quantize",
    "info": "info",
    "web": "web",
    "finetune": "finetune",
    "export": "export",
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


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
        p = sub.add_parser(name, help=module.HELP, description=plain_text(module.__doc__),
                           formatter_class=HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``baichuan`` console command; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # --data_dir and --data-dir spell the same flag in every subcommand; errors name the spelling typed.
    command_at = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    typed: dict[str, str] = {}
    if command_at is not None and argv[command_at] in SUBCOMMANDS:
        rest, typed = normalize_argv(_subparsers(parser)[argv[command_at]], argv[command_at + 1:])
        argv = argv[: command_at + 1] + rest
    args, extra = parser.parse_known_args(argv)
    args._typed_flags = typed
    if extra:  # name the close matches of a mistyped flag (e.g. --lora_rnk -> --lora_rank)
        from ..training.arguments import unrecognized_message

        sub = _subparsers(parser)[args.command]
        sub.error(unrecognized_message(sub, extra))
    try:
        status = int(args.run(args) or 0)
        if _leave_process_group(wait_for_peers=True):
            # Under torchrun, exit without interpreter teardown: with gloo, a C++ worker thread sometimes
            # outlives the process group and std::terminate aborts a rank that has already finished cleanly.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
        return status
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as e:
        # Configuration and input errors: one clear line, no traceback (CheckpointError is a ValueError).
        print(f"baichuan {args.command}: error: {in_typed_spelling(str(e), args)}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group(wait_for_peers=False)


def _leave_process_group(wait_for_peers: bool) -> bool:
    """Under torchrun, leave the process group cleanly (a rank that exits while a peer still talks to it makes
    gloo abort that peer). Returns whether there was a group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()
        return True
    return False
