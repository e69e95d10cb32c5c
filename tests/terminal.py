"""Run a ``baichuan`` command on a pseudo-terminal and wait for its output (CLI tests)."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import sys
import time


class Terminal:
    """Reads a pseudo-terminal's output and waits for text to appear (again)."""

    def __init__(self, pid: int, fd: int):
        self.pid, self.fd, self.buf = pid, fd, b""

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, needle: bytes, count: int = 1, timeout: float = 60.0) -> None:
        end = time.time() + timeout
        while self.buf.count(needle) < count:
            left = end - time.time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {needle!r} x{count}; got {self.buf[-400:]!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"terminal closed while waiting for {needle!r}; got {self.buf[-400:]!r}")
                self.buf += chunk

    def exit_status(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        assert os.WIFEXITED(status), status
        return os.WEXITSTATUS(status)


@contextlib.contextmanager
def baichuan_on_terminal(*args: str):
    """``python -m baichuan13b ARGS`` on a pseudo-terminal; killed on the way out if still running."""
    pid, fd = pty.fork()
    if pid == 0:  # child: the real command on a terminal
        os.environ["PROMPT_TOOLKIT_NO_CPR"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "baichuan13b", *args])
    try:
        yield Terminal(pid, fd)
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
