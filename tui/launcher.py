"""Start a runtime as a child process for ``tiertop demo``, and stop it without leftovers.

The runtime (``tiertop run`` or ``tiertop sim``) runs in its own session and process group with
its output in a log file in a private temporary directory, which is also its ``--workdir``. It
binds port 0 everywhere and prints ``telemetry: ADDR``, ``control: ADDR`` and ``replay: ADDR``;
:meth:`RuntimeProcess.wait_addresses` reads them from the log. :meth:`RuntimeProcess.stop` sends
SIGTERM to the group, waits, then SIGKILLs whatever is left of the group, and removes the
directory. On Linux the child also gets SIGTERM if this process dies without cleaning up.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["RuntimeExited", "RuntimeProcess"]

_ADDRESS_RE = re.compile(r"^(telemetry|control|replay): (\S+)$", re.M)


class RuntimeExited(RuntimeError):
    """The runtime stopped before it was ready."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGTERM this child when the thread that started it dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except Exception:
        pass


class RuntimeProcess:
    """A runtime child process.

    Args:
        args: ``tiertop`` arguments after the program name (e.g. ``["run", "--rate", "4"]``);
            ``--workdir`` is added for ``run``.
        keep_dir: Leave the temporary directory (and its log) behind.
        argv: Run this command instead of ``python -m tiertop ARGS`` (tests).
    """

    def __init__(self, args: Sequence[str], *, keep_dir: bool = False,
                 argv: Sequence[str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tiertop-demo-"))
        self.log_path = self.dir / "runtime.log"
        self.keep_dir = keep_dir
        command = [sys.executable, "-m", "tiertop", *args] if argv is None else list(argv)
        if argv is None and args and args[0] == "run" and "--workdir" not in args:
            command += ["--workdir", str(self.dir)]
        self.argv = command
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent if sys.platform ==
                "linux" else None,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.pid = self.proc.pid
        self.addresses: dict[str, str] = {}

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def wait_addresses(
        self,
        timeout_s: float = 120.0,
        *,
        need: Sequence[str] = ("telemetry", "control", "replay"),
        cancelled: Callable[[], bool] = lambda: False,
    ) -> dict[str, str]:
        """Wait until the runtime printed its addresses.

        Raises:
            RuntimeExited: The runtime exited first (the message has its last log lines).
            TimeoutError: Not ready within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not cancelled():
            try:
                text = self.log_path.read_text(errors="replace")
            except OSError:
                text = ""
            self.addresses = dict(_ADDRESS_RE.findall(text))
            if all(k in self.addresses for k in need):
                return self.addresses
            code = self.proc.poll()
            if code is not None:
                raise RuntimeExited(
                    f"the runtime exited with status {code} before it was ready:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)
        if cancelled():
            raise RuntimeExited("cancelled")
        raise TimeoutError(f"the runtime printed no addresses within {timeout_s:g} s:\n"
                           f"{self.log_tail()}")

    def _group_alive(self) -> list[int]:
        """Processes still in the runtime's process group (the memory servers, say)."""
        import psutil

        alive = []
        for p in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(p.pid) == self.pid and p.pid != os.getpid():
                    alive.append(p.pid)
        return alive

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM the group, wait, SIGKILL what is left; remove the directory.

        Returns the runtime's exit status (None if it had to be killed).
        """
        code = self.proc.poll()
        if code is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                code = None
        if self._group_alive():  # the runtime was killed, or left children behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while self._group_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return code
