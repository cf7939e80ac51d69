"""`imtext submit`: the documented `ray job submit` line, from Python. It ships the working directory,
runs an `imtext ...` command on the cluster, prints the job id, follows the logs and says where the model
landed. Equivalent shell:

    ray job submit --address http://HEAD:8265 --working-dir . -- imtext train --data coco:/data/coco ...
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import time
from pathlib import Path

from imtext.errors import ImtextError

# gitignore syntax relative to the working dir: a leading "/" anchors a name to the project root, so
# `/data` (the README's datasets) never drops the package's own imtext/data/ from the shipped code.
DEFAULT_EXCLUDES = [
    "/.venv",
    "/.git",
    "/runs",
    "/data",
    "/test-artifacts",
    "**/__pycache__",
    "*.safetensors",
    "*.faiss",
]


def job_entrypoint(args: list[str]) -> str:
    """`-- train ...` -> `imtext train ...` (an explicit program is kept as given)."""
    if not args:
        raise ImtextError(
            "nothing to submit: give an imtext command after --, e.g. imtext submit -- train --data ..."
        )
    if args[0] in ("imtext", "python", "python3", "bash", "sh") or "/" in args[0]:
        return shlex.join(args)
    return shlex.join(["imtext", *args])


def runtime_env(working_dir: str | Path) -> dict:
    """Ship the project and install it on the workers, so the job runs the same code as here."""
    working_dir = Path(working_dir).resolve()
    if not (working_dir / "pyproject.toml").is_file():
        raise ImtextError(f"--working-dir {working_dir} has no pyproject.toml; run from the imtext checkout")
    env = {"working_dir": str(working_dir), "excludes": DEFAULT_EXCLUDES}
    if os.environ.get("IMTEXT_JOB_PIP"):
        env["pip"] = shlex.split(os.environ["IMTEXT_JOB_PIP"])
    return env


MODEL_LINE = re.compile(r"^model directory: (.+)$", re.MULTILINE)


def model_location(logs: str) -> str | None:
    """`imtext train` prints `model directory: /abs/path` as its last word; find it in the job's logs."""
    found = MODEL_LINE.findall(logs)
    return found[-1].strip() if found else None


def submit(
    args: list[str],
    address: str | None = None,
    working_dir: str | Path = ".",
    follow: bool = True,
    submission_id: str | None = None,
    runtime: dict | None = None,
) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ImtextError("no cluster given: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    entrypoint = job_entrypoint(args)
    try:
        client = JobSubmissionClient(address)
    except Exception as e:  # connection refused, wrong port, auth
        raise ImtextError(f"cannot reach the Ray job server at {address}: {e}") from None
    job_id = client.submit_job(
        entrypoint=entrypoint, runtime_env=runtime or runtime_env(working_dir), submission_id=submission_id
    )
    print(f"submitted job {job_id} to {address}: {entrypoint}", flush=True)
    if not follow:
        print(f"follow it with: ray job logs --address {address} --follow {job_id}")
        return 0

    seen: list[str] = []

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            seen.append(lines)
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except Exception:  # the log stream ends abruptly on some versions: fall back to polling
        pass
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        time.sleep(1)
        status = client.get_job_status(job_id)
    print(f"job {job_id}: {status.value}")
    where = model_location("".join(seen) or client.get_job_logs(job_id))
    if status == JobStatus.SUCCEEDED and where:
        if "://" in where:  # object storage: reachable from anywhere with the credentials
            print(f"the model landed at {where}")
        else:
            print(
                f"the model landed at {where} on the cluster (give --out a shared folder or a URI to keep it)"
            )
    return 0 if status == JobStatus.SUCCEEDED else 1
