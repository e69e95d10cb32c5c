"""Chat in the browser: start the streamlit page (the seed's web_demo.py) on this machine.

Runs ``streamlit run <app> --server.address ADDRESS --server.port PORT --server.headless true
--browser.gatherUsageStats false -- <model and sampling flags>`` in this process (Ctrl+C stops it). The model is
loaded once, on the first visit, and shared by every browser tab; each tab has its own history. The sidebar sets
temperature, top-p, top-k, repetition penalty, max new tokens and the system prompt; the flags given here are
their starting values.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..web.page import APP_PATH, add_arguments as add_page_arguments, argv_from_namespace, build_parser
from .common import require_extra

HELP = "chat in the browser (streamlit page)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_page_arguments(p)
    g = p.add_argument_group("server")
    g.add_argument("--port", type=int, default=8501, help="port to listen on")
    g.add_argument("--address", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 makes the page reachable from other machines)")
    g.add_argument("--open-browser", action="store_true", help="open the page in a browser on this machine")


def streamlit_command(args: argparse.Namespace) -> list[str]:
    """The ``streamlit run`` command line for ``args`` (the page's flags follow ``--``)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.address", args.address,
        "--server.port", str(args.port),
        "--server.headless", "false" if args.open_browser else "true",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal",
        "--", *argv_from_namespace(build_parser(), args),
    ]


def run(args: argparse.Namespace) -> int:
    require_extra("web", "baichuan web")
    command = streamlit_command(args)
    print(f"baichuan web: http://{args.address}:{args.port}  (Ctrl+C to stop)", file=sys.stderr, flush=True)
    # Become the streamlit server (no child process): Ctrl+C and SIGTERM reach it directly, none is left behind.
    os.execv(command[0], command)
