"""Start the Serve app (and the page beside it): `imtext serve`, or `start(...)` from Python.

`start` is non-blocking and returns a handle whose `stop()` removes what it started (the Serve app, Serve
itself, and Ray when it started Ray), so the demo and the tests can run the real app and clean up after.
"""

from __future__ import annotations

import argparse
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from imtext.errors import ImtextError

APP_NAME = "imtext"


@dataclass
class ServeHandleInfo:
    """A running app: `url` is the API's base URL; `stop()` is idempotent."""

    url: str
    app_name: str = APP_NAME
    started_ray: bool = False
    _stopped: bool = field(default=False, repr=False)

    @property
    def docs_url(self) -> str:
        return f"{self.url}/docs"

    def stop(self) -> None:
        """Remove the app; stop Serve when no other app is left on the cluster, and Ray when `start` began it
        (on a shared cluster, other people's apps and the cluster stay up)."""
        if self._stopped:
            return
        self._stopped = True
        import ray
        from ray import serve

        try:
            if self.started_ray:
                serve.shutdown()  # our own local Ray: everything goes
            else:
                serve.delete(self.app_name)
                if not serve.status().applications:
                    serve.shutdown()  # the proxy and the controller too
        finally:
            if self.started_ray and ray.is_initialized():
                ray.shutdown()

    def __enter__(self) -> ServeHandleInfo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_dirs(model_dir: str | Path, index_dir: str | Path) -> tuple[Path, Path]:
    """Fail before starting anything when a folder is not what it should be (each message says what to do)."""
    from imtext.collection import read_info

    model, index = Path(model_dir).expanduser(), Path(index_dir).expanduser()
    if not model.is_dir():
        raise ImtextError(f"model directory {model} does not exist: train one with `imtext train --out DIR`")
    missing = [f for f in ("config.yaml", "weights.safetensors", "vocab.json") if not (model / f).is_file()]
    if missing:
        raise ImtextError(
            f"{model} is not a model directory (missing {', '.join(missing)}); "
            "point --model at the output folder of `imtext train`"
        )
    read_info(index)  # ImtextError when it is not a collection
    return model.resolve(), index.resolve()


def _check_port(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ImtextError(f"--port must be from 1 to 65535, got {port}")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ImtextError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from None


def wait_healthy(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/healthz", timeout=2.0)
            if r.status_code == 200 and r.json().get("status") == "ok":
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = type(e).__name__
        time.sleep(0.2)
    raise ImtextError(f"the API at {url} did not become healthy within {timeout_s:.0f} s ({last})")


def start(
    model_dir: str | Path,
    index_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    admin_token: str | None = None,
    app_name: str = APP_NAME,
    options: dict[str, Any] | None = None,
    wait_s: float = 300.0,
) -> ServeHandleInfo:
    """Deploy the app on `host:port` and return once GET /healthz answers.

    Uses the Ray already initialised in this process, else connects to `address` / $RAY_ADDRESS, else starts
    a local Ray. `options` are extra build_app arguments (timeouts, batch sizes, deployment options).
    """
    import ray
    from ray import serve

    from imtext.train.ray_train import ensure_ray
    from serve.app import build_app

    model, index = check_dirs(model_dir, index_dir)
    _check_port(host, port)
    args = {"model_dir": str(model), "index_dir": str(index), **(options or {})}
    if admin_token:
        args["admin_token"] = admin_token
    app = build_app(args)  # loads the model once and checks the collection before anything is deployed
    started_ray = not ray.is_initialized()
    ensure_ray(address)
    info = ServeHandleInfo(
        url=f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}",
        app_name=app_name,
        started_ray=started_ray,
    )
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=app_name, route_prefix="/", blocking=False)
        wait_healthy(info.url, wait_s)
    except BaseException:
        info.stop()
        raise
    return info


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (a process manager, `kill`) both end in the same clean stop. Set explicitly:
    a shell starts a background job with SIGINT ignored, and Ray replaces the SIGTERM handler."""
    import signal
    import threading

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, interrupt)


def run_until_interrupted(
    model_dir: str | Path,
    index_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    ui_port: int = 7860,
    no_ui: bool = False,
    address: str | None = None,
    exit_after_ready: bool = False,
    started: float | None = None,
) -> int:
    """The API (and the page unless `no_ui`) until Ctrl-C, then everything stops (`imtext serve`, the demo).

    `exit_after_ready` stops as soon as both answer (a smoke check); `started` (a perf_counter value) makes
    the ready line say how long the whole run took to get there.
    """
    import os

    from imtext.report import console

    token = os.environ.get("IMTEXT_ADMIN_TOKEN")
    console.print("starting Ray Serve (the first start takes a while) ...")
    _stop_on_signals()
    try:
        running = start(model_dir, index_dir, host=host, port=port, address=address, admin_token=token)
    except KeyboardInterrupt:  # start() has already stopped what it started
        return 130
    _stop_on_signals()  # again: ray.init installed its own SIGTERM handler
    page = None
    try:
        console.print(f"API      {running.url}   (OpenAPI docs: {running.docs_url})")
        console.print(
            "admin    POST /admin/reload "
            + (
                "(Authorization: Bearer $IMTEXT_ADMIN_TOKEN)"
                if token
                else "off (set IMTEXT_ADMIN_TOKEN to enable index swaps)"
            )
        )
        if not no_ui:
            from ui.app import launch

            page = launch(running.url, host=host, port=ui_port, block=False)
            console.print(f"page     {page.url}")
        if started is not None:
            console.print(f"ready after {time.perf_counter() - started:.0f} s")
        if exit_after_ready:
            return 0
        console.print("Ctrl-C stops everything.")
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        console.print("stopping ...")
        if page is not None:
            page.close()
        running.stop()


def cmd_serve(args: argparse.Namespace) -> int:
    """`imtext serve --model DIR --index DIR [--host] [--port] [--ui-port] [--no-ui] [--address]`."""
    return run_until_interrupted(
        args.model,
        args.index,
        host=args.host,
        port=args.port,
        ui_port=args.ui_port,
        no_ui=args.no_ui,
        address=args.address,
    )
