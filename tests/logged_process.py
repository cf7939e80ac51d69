"""A command started in its own session whose output lines are collected as they come (and echoed), for
tests and benchmarks that run a long-lived imtext command (`imtext demo`) and wait for what it prints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time


def start_logged(
    cmd: list[str], env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None
) -> tuple[subprocess.Popen, list[str]]:
    """Start `cmd` (stderr into stdout, unbuffered Python, a wide terminal, no inherited RAY_ADDRESS) in a
    session of its own (so its whole process group can be signalled); returns it and its lines so far."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def wait_for_line(lines: list[str], proc: subprocess.Popen, needle: str, timeout: float) -> str:
    """The first line containing `needle`; RuntimeError (with the output's tail) if the command exits
    first or `timeout` seconds pass (then the command is killed)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        hit = next((line for line in lines if needle in line), None)
        if hit is not None:
            return hit
        if proc.poll() is not None:
            time.sleep(0.5)  # the last lines
            raise RuntimeError(f"exited ({proc.returncode}) before {needle!r}:\n{''.join(lines)[-4000:]}")
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"no {needle!r} within {timeout} s:\n{''.join(lines)[-4000:]}")


def interrupt(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Ctrl-C (SIGINT) if it still runs, then its whole process group killed if it has not ended in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
