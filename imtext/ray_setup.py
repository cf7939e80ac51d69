"""Connecting to Ray: one place that train, index, tune and serve all go through.

`ensure_ray()` joins the cluster named by `address` or RAY_ADDRESS, and otherwise starts a local Ray with
Ray's own CPU count (every core of this machine). Small machines are the exception, not the default:
on 2 cores, Ray Train's workers, Ray Data's actors and Serve's replicas can wait on each other for CPUs,
so the demo and `--ray-cpus N` declare more logical CPUs than there are cores (see the field notes).

What reaches the terminal: by default imtext prints its own progress, and Ray's logs go to Ray's log
files (`logs_dir()`): the workers' and Serve's output is not streamed here (`log_to_driver=False`), and
the INFO lines of Ray's libraries in this process are turned down with the logger levels Ray documents
("ray", "ray.serve", "ray.train", "ray.tune"; Ray Data through its RAY_DATA_LOGGING_CONFIG). Warnings and
errors of this process, and every failure a task, actor or training run raises, still show.
`configure_console(verbose=True)` (the commands' `--verbose`) leaves Ray as loud as it is by itself.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

from imtext.errors import ImtextError

# The library leaves Ray as it is (log_to_driver on, Ray's logger levels); a command turns it down with
# configure_console() before Ray starts.
_console = {"verbose": True, "session_dir": None}

# Ray's own loggers in this process, turned down to warnings unless --verbose (Ray's "Configuring Logging"
# guide: modify the "ray" logger or a library's logger by name).
RAY_LOGGERS = ("ray", "ray.serve", "ray.train", "ray.tune")
# Known-harmless warnings, at ERROR (an error from them still shows): a local Ray turns token authentication
# on (Ray >= 2.59) and says so on every start; Ray Data warns that its progress bars are off, which
# imtext.embed does on purpose (it draws its own).
NOTICE_LOGGERS = (
    "ray._private.authentication.authentication_token_setup",
    "ray.data._internal.progress",
)


def configure_console(verbose: bool = False) -> None:
    """Set once per command, before Ray starts: Ray's logs on this terminal (`verbose`) or in its files."""
    _console["verbose"] = bool(verbose)
    if not verbose:
        # read when ray.data is imported (here and in Ray's workers, which inherit the environment)
        if "RAY_DATA_LOGGING_CONFIG" not in os.environ:  # a user's own config wins
            os.environ["RAY_DATA_LOGGING_CONFIG"] = _ray_data_logging_file()
    apply_log_levels()


def is_verbose() -> bool:
    return bool(_console["verbose"])


def apply_log_levels() -> None:
    """The driver-side logger levels for the current setting. Ray (re)sets its own loggers when it starts
    and when a library is imported (ray.serve on import), so this runs again after each of those."""
    if _console["verbose"]:
        return
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _ray_data_logging_file() -> str:
    """Ray Data's default logging config with its console handler at WARNING (its file, ray-data.log in the
    session's logs folder, still gets everything), for RAY_DATA_LOGGING_CONFIG."""
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "ray": {"format": "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"}
        },
        "filters": {"console_filter": {"()": "ray.data._internal.logging.HiddenRecordFilter"}},
        "handlers": {
            "file": {
                "class": "ray.data._internal.logging.SessionFileHandler",
                "formatter": "ray",
                "filename": "ray-data.log",
            },
            "console": {
                "class": "ray._private.log.PlainRayHandler",
                "formatter": "ray",
                "level": "WARNING",
                "filters": ["console_filter"],
            },
        },
        "loggers": {"ray.data": {"level": "DEBUG", "handlers": ["file", "console"], "propagate": False}},
    }
    # One file per user, rewritten whole (same content every time), not a new temporary file per command.
    from imtext.atomic import write_text

    path = os.path.join(tempfile.gettempdir(), f"imtext-ray-data-logging-{os.getuid()}.yaml")
    write_text(path, json.dumps(config))  # JSON is YAML
    return path


def logs_dir() -> str | None:
    """Where this process's Ray writes its logs (the session's `logs` folder; None before Ray starts)."""
    session = _console["session_dir"]
    return os.path.join(session, "logs") if session else None


def ensure_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    min_cpus: int | None = None,
    log_to_driver: bool | None = None,
) -> None:
    """Connect this process to Ray unless it already is.

    address: a cluster (`ray://...`, `HOST:PORT`, `auto`); default RAY_ADDRESS, else a new local Ray.
    num_cpus: logical CPUs of a local Ray (default: Ray counts the cores).
    min_cpus: at least this many logical CPUs for a local Ray, for small machines where every stage of a
        run shares two cores (the demo asks for 4).
    Both CPU options are refused for an existing cluster, whose nodes already declared their CPUs.
    log_to_driver: stream the workers' output to this terminal; default: yes, unless a command asked for a
        quiet console (configure_console without --verbose): then it stays in Ray's log files (`logs_dir()`).
    """
    import ray

    if ray.is_initialized():
        apply_log_levels()
        return
    if log_to_driver is None:
        log_to_driver = is_verbose()
    quiet = {} if is_verbose() else {"logging_level": logging.WARNING}
    address = address or os.environ.get("RAY_ADDRESS")
    if num_cpus is not None and num_cpus < 1:
        raise ImtextError(f"--ray-cpus must be at least 1, got {num_cpus}")
    if address:
        if num_cpus is not None:
            raise ImtextError(
                "--ray-cpus applies to a local Ray only; a cluster's nodes declare their own CPUs"
            )
        _started(ray.init(address=address, log_to_driver=log_to_driver, **quiet))
        return
    cpus = num_cpus
    if cpus is None and min_cpus is not None:
        cpus = max(min_cpus, os.cpu_count() or 1)
    _started(
        ray.init(
            address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=log_to_driver, **quiet
        )
    )


def _started(context) -> None:
    info = getattr(context, "address_info", None) or {}
    _console["session_dir"] = info.get("session_dir")
    apply_log_levels()


def shutdown_ray() -> None:
    """Stop the Ray this process started or joined (a no-op when Ray was never imported)."""
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
