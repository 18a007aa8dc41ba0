"""End to end in a real terminal: ``tiertop demo`` in tmux starts a runtime, the tier panels
fill, a watermark change typed on the keyboard shows up in the dram panel, ``q`` quits, and no
process or temporary file is left behind."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None,
                       reason="tmux is not installed (apt-get install tmux)"),
]


class Tmux:
    """One tmux server of our own (its own socket), one session."""

    def __init__(self, command: str, width: int = 160, height: int = 48) -> None:
        self.socket = f"tiertop-test-{os.getpid()}"
        self.session = "demo"
        self.tmux("new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height),
                  command)

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, timeout=20)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session).stdout

    def keys(self, *keys: str) -> None:
        for key in keys:  # one at a time, as a person types
            self.tmux("send-keys", "-t", self.session, key)
            time.sleep(0.15)

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", self.session).returncode == 0

    def pane_pid(self) -> int:
        return int(self.tmux("display-message", "-p", "-t", self.session,
                             "#{pane_pid}").stdout.strip())

    def kill(self) -> None:
        self.tmux("kill-server")


def wait_for(what: str, cond: Callable[[], object], screen: Callable[[], str],
             timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {timeout:g} s; the screen:\n{screen()}")


def dram_panel(screen: str) -> str:
    lines = screen.splitlines()
    for i, line in enumerate(lines):
        if "1 dram · dram" in line:
            return "\n".join(lines[i:i + 8])
    return ""


@pytest.fixture
def demo() -> Iterator[Tmux]:
    command = f"exec {shlex.quote(sys.executable)} -m tiertop demo --rate 8"
    t = Tmux(command)
    try:
        yield t
    finally:
        t.kill()


def test_demo_in_tmux(demo: Tmux) -> None:
    pid = demo.pane_pid()
    def filled() -> bool:
        screen = demo.screen()
        m = re.search(r"(\d+\.\d)%", dram_panel(screen))
        return "● LIVE" in screen and m is not None and float(m.group(1)) > 10

    wait_for("the dashboard connecting and the dram panel filling", filled, demo.screen,
             timeout=120)
    started = psutil.Process(pid).children(recursive=True)
    runtime = next(p for p in started if "run" in p.cmdline())
    workdir = Path(runtime.cmdline()[runtime.cmdline().index("--workdir") + 1])
    assert workdir.is_dir() and len(started) >= 2  # the runtime and its memory server
    assert "hi 0.90  lo 0.80" in dram_panel(demo.screen())

    demo.keys("w")
    wait_for("the watermark form", lambda: "Watermarks · dram" in demo.screen(), demo.screen,
             timeout=10)
    demo.keys("Tab", "0", ".", "5", "Tab", "0", ".", "4", "Enter")
    wait_for("the new watermarks in the dram panel",
             lambda: "hi 0.50  lo 0.40" in dram_panel(demo.screen()), demo.screen, timeout=15)
    assert "last: ✔ SetWatermarks dram" in demo.screen()

    demo.keys("q")
    wait_for("the demo to exit", lambda: not demo.alive(), demo.screen, timeout=30)
    wait_for("every process it started to end",
             lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                             for p in started),
             lambda: str([p.cmdline() for p in started if p.is_running()]), timeout=10)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not workdir.exists(), f"{workdir} left behind"
