"""The handlers of the commands that run the apps: `imtext serve`, `imtext ui` and `imtext tune`.

This module (with the demo) is the only part of imtext that imports `serve/`, `tune/` or `ui/`, and it does
so inside the handlers: the library never depends on its apps (import-linter checks it, see pyproject.toml).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from imtext.cli.commands import connect_ray
from imtext.cli.config_flags import explicit_overrides, load_config
from imtext.errors import ImtextError
from imtext.report import console


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


def serve_until_interrupted(
    model_dir: str | Path,
    index_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    ui_port: int = 7860,
    no_ui: bool = False,
    exit_after_ready: bool = False,
    started: float | None = None,
    index_root: str | Path | None = None,
    options: dict[str, Any] | None = None,
    proxy_location: str | None = None,
) -> int:
    """The API (and the page unless `no_ui`) until Ctrl-C, then everything stops (`imtext serve`, the demo).

    Uses the Ray this process is connected to (else a local one). `exit_after_ready` stops as soon as both
    answer (a smoke check); `started` (a perf_counter value) makes the ready line say how long the whole
    run took to get there. `index_root` is the folder POST /admin/reload may load from (default: the
    folder `index_dir` lies in). `options`: more build_app arguments; `proxy_location`: Serve's.
    """
    from serve.launch import start

    token = os.environ.get("IMTEXT_ADMIN_TOKEN")
    console.print("starting Ray Serve (the first start takes a while) ...")
    _stop_on_signals()
    try:
        running = start(
            model_dir,
            index_dir,
            host=host,
            port=port,
            admin_token=token,
            index_root=index_root,
            options=options,
            proxy_location=proxy_location,
        )
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


def check_index_root(index_root: str | Path, index_dir: Path) -> Path:
    """`--index-root` resolved: an existing folder that holds the collection the app starts with."""
    root = Path(index_root).expanduser()
    if not root.is_dir():
        raise ImtextError(f"--index-root {root} is not a folder: give the folder your collections live in")
    root = root.resolve()
    if not index_dir.is_relative_to(root):
        raise ImtextError(
            f"--index {index_dir} is outside --index-root {root}: POST /admin/reload could never load it "
            "back; pick a root that contains it"
        )
    return root


def cmd_serve(args: argparse.Namespace) -> int:
    """`imtext serve --model DIR --index DIR [--index-root DIR] [--host] [--port] [--ui-port] [--no-ui]
    [--address]`."""
    from serve.launch import check_dirs

    _, index = check_dirs(args.model, args.index)  # before Ray starts: a typo costs no start-up time
    root = check_index_root(args.index_root, index) if args.index_root else None
    options = parse_app_args(args.app_arg)
    connect_ray(args)
    return serve_until_interrupted(
        args.model,
        args.index,
        host=args.host,
        port=args.port,
        ui_port=args.ui_port,
        no_ui=args.no_ui,
        index_root=root,
        options=options,
        proxy_location=args.proxy_location,
    )


def parse_app_args(assignments: list[str]) -> dict[str, Any]:
    """`--app-arg KEY=VALUE` (YAML values) as build_app arguments, checked before Ray starts (the keys
    `imtext serve` sets from its own flags are refused here: give them as flags)."""
    import yaml

    from serve.app import AppArgs, parse_args

    own = {"model_dir", "index_dir", "index_root", "admin_token"}
    options: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ImtextError(f"--app-arg {item!r} must look like KEY=VALUE")
        if key in own:
            raise ImtextError(f"--app-arg {key}: use imtext serve's own flag (or IMTEXT_ADMIN_TOKEN) for it")
        if key not in AppArgs.model_fields:
            raise ImtextError(
                f"--app-arg {key}: unknown; known: {', '.join(sorted(set(AppArgs.model_fields) - own))}"
            )
        try:
            options[key] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise ImtextError(
                f"--app-arg {key}: the value is not YAML ({getattr(e, 'problem', e)})"
            ) from None
    parse_args({"model_dir": ".", "index_dir": ".", **options})  # every value's type, before Ray starts
    return options


def cmd_ui(args: argparse.Namespace) -> int:
    """`imtext ui --api URL`: only the page, talking to a running API (here or on another machine)."""
    from ui.app import serve_page

    return serve_page(args.api, host=args.host, port=args.port)


def cmd_tune(args: argparse.Namespace) -> int:
    """`imtext tune`: a search over a YAML space (tune.run), then where its outputs went."""
    from tune.run import SPEC_FILE, run_tune, unfinished
    from tune.space import space_from_dict

    connect_ray(args)
    if args.resume:
        grid = run_tune(resume=args.resume)
        run_dir = Path(args.resume).resolve()
    else:
        grid = run_tune(
            load_config(args),
            space_path=args.space,
            trials=args.trials,
            scheduler=args.scheduler,
            search=args.search,
            metric=args.metric,
            run_dir=args.run_dir,
            concurrent=args.concurrent,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            workers_per_trial=args.workers_per_trial,
            overrides=explicit_overrides(args),
            storage=args.storage,
        )
        run_dir = Path(args.run_dir).resolve()
    spec_path = run_dir / SPEC_FILE
    if not spec_path.is_file():
        raise ImtextError(f"{run_dir} has no {SPEC_FILE}: the search did not start")
    spec = json.loads(spec_path.read_text())
    if unfinished(grid, spec, space_from_dict(spec["space"])):
        return 130
    print(f"run folder: {run_dir}")
    print(f"retrain the best: imtext train --config {run_dir / 'best.yaml'}")
    return 0
