"""A Ray head of a test's own (`ray start --head --block`), on free ports, stopped by its PID.

Never Ray's default ports (6379, 8265, 10001, 52365) and never a bare `ray stop`: other Ray instances (the
suite's own, another session's) may run on the same machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import free_port


@dataclass
class Head:
    proc: subprocess.Popen
    address: str  # the GCS, for RAY_ADDRESS / ray.init
    dashboard: str  # the job server, for `imtext submit --address` / `ray job ...`
    log: Path

    def stop(self) -> None:
        stop_session(self.proc)


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL `proc` and every process of the session it leads (`start_new_session`): for `ray start`, its
    GCS, raylet, dashboard and workers, which may sit in process groups of their own. A lost machine."""
    import psutil

    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and os.getsid(p.pid) == proc.pid:
                p.kill()
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    proc.wait()


def stop_session(proc: subprocess.Popen, grace_s: float = 5) -> None:
    """SIGTERM, on which `ray start --block` stops what it started; that takes ~30 s on 2 busy cores, so
    after `grace_s` whatever is left of its session is killed (`kill_session`)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    kill_session(proc)


def start_head(ray: str | Path, env: dict[str, str], log: Path, num_cpus: int, timeout: float = 120) -> Head:
    """`ray start --head --block` with the `ray` script given (the environment under test's), waiting until
    its job server answers. Token authentication follows `env` (RAY_AUTH_MODE / RAY_AUTH_TOKEN)."""
    port, dash = free_port(), free_port()
    cmd = [
        str(ray), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}", f"--num-cpus={num_cpus}", "--include-dashboard=true",
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    head = Head(proc, f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", log)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{head.dashboard}/api/version", timeout=2).status_code < 500:
                return head
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            head.stop()
            raise RuntimeError(f"the Ray head did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
