"""Start the Serve app from Python: `start(...)` (what `imtext serve`, the demo and the tests use).

`start` is non-blocking and returns a handle whose `stop()` removes what it started (the Serve app, Serve
itself, and Ray when it started Ray), so the demo and the tests can run the real app and clean up after.
"""

from __future__ import annotations

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
    from imtext.model import MODEL_FILES

    model, index = Path(model_dir).expanduser(), Path(index_dir).expanduser()
    if not model.is_dir():
        raise ImtextError(f"model directory {model} does not exist: train one with `imtext train --out DIR`")
    missing = [f for f in MODEL_FILES if not (model / f).is_file()]
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
    request_timeout_s: float = 60.0,
    index_root: str | Path | None = None,
    proxy_location: str | None = None,
) -> ServeHandleInfo:
    """Deploy the app on `host:port` and return once GET /healthz answers.

    Uses the Ray already initialised in this process, else connects to `address` / $RAY_ADDRESS, else starts
    a local Ray. `options` are extra build_app arguments (timeouts, batch sizes, deployment options, the
    index_root of POST /admin/reload). `request_timeout_s` is the HTTP proxy's last-resort deadline (the app
    answers 503 itself long before it), as serve/config.yaml sets it. `index_root` (`imtext serve
    --index-root`) is the folder POST /admin/reload may load from; default: the folder `index_dir` lies in.
    `proxy_location`: Serve's (EveryNode, its default, or HeadOnly); it applies when this call starts Serve.
    """
    import ray
    from ray import serve

    from imtext.ray_setup import ensure_ray
    from serve.app import build_app

    model, index = check_dirs(model_dir, index_dir)
    _check_port(host, port)
    args = {"model_dir": str(model), "index_dir": str(index), **(options or {})}
    if admin_token:
        args["admin_token"] = admin_token
    if index_root is not None:
        args["index_root"] = str(Path(index_root).expanduser().resolve())
    app = build_app(args)  # loads the model once and checks the collection before anything is deployed
    started_ray = not ray.is_initialized()
    ensure_ray(address)
    info = ServeHandleInfo(
        url=f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}",
        app_name=app_name,
        started_ray=started_ray,
    )
    try:
        serve.start(
            proxy_location=proxy_location,
            http_options={"host": host, "port": port, "request_timeout_s": request_timeout_s},
        )
        serve.run(app, name=app_name, route_prefix="/", blocking=False)
        wait_healthy(info.url, wait_s)
    except BaseException:
        info.stop()
        raise
    return info
