"""Connecting to Ray: one place that train, index, tune and serve all go through.

`ensure_ray()` joins the cluster named by `address` or RAY_ADDRESS, and otherwise starts a local Ray with
Ray's own CPU count (every core of this machine). Small machines are the exception, not the default:
on 2 cores, Ray Train's workers, Ray Data's actors and Serve's replicas can wait on each other for CPUs,
so the demo and `--ray-cpus N` declare more logical CPUs than there are cores (see the field notes).
"""

from __future__ import annotations

import os

from imtext.errors import ImtextError


def ensure_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    min_cpus: int | None = None,
    log_to_driver: bool = True,
) -> None:
    """Connect this process to Ray unless it already is.

    address: a cluster (`ray://...`, `HOST:PORT`, `auto`); default RAY_ADDRESS, else a new local Ray.
    num_cpus: logical CPUs of a local Ray (default: Ray counts the cores).
    min_cpus: at least this many logical CPUs for a local Ray, for small machines where every stage of a
        run shares two cores (the demo asks for 4).
    Both CPU options are refused for an existing cluster, whose nodes already declared their CPUs.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if num_cpus is not None and num_cpus < 1:
        raise ImtextError(f"--ray-cpus must be at least 1, got {num_cpus}")
    if address:
        if num_cpus is not None:
            raise ImtextError(
                "--ray-cpus applies to a local Ray only; a cluster's nodes declare their own CPUs"
            )
        ray.init(address=address, log_to_driver=log_to_driver)
        return
    cpus = num_cpus
    if cpus is None and min_cpus is not None:
        cpus = max(min_cpus, os.cpu_count() or 1)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=log_to_driver)


def shutdown_ray() -> None:
    """Stop the Ray this process started or joined (a no-op when Ray was never imported)."""
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
