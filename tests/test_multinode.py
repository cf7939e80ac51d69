"""A real two-node Ray cluster on one machine, the way a launched cluster looks: a head (`ray start --head`) and a
second node (`ray start --address ...`), separate processes with their own node ids and tiny resources. On it
`imtext submit -- train --workers 2` places one Ray Train worker per node and the model lands in the shared
storage path. Every port is chosen free; both nodes are stopped by their own process ids."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    # Explicit: with a token in ~/.ray/auth_token, `ray start` would turn token auth on for this local,
    # 127.0.0.1-only test cluster, and the state API calls below would need it too.
    env["RAY_AUTH_MODE"] = "disabled"
    return subprocess.Popen(
        [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", *args],
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def two_nodes(tmp_path):
    """(dashboard address, {node id: custom resource}) of a head and a second node, 2 CPUs each."""
    gcs, dash = free_port(), free_port()
    common = ["--num-cpus=2", "--min-worker-port=21000", "--max-worker-port=21999"]
    head = _start(
        [
            "--head",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--include-dashboard=true",
            '--resources={"head_node": 1}',
            *common,
        ],
        tmp_path / "head.log",
    )
    procs = [head]
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{address}/api/version", timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if head.poll() is not None:
                pytest.fail(f"ray start --head exited: {(tmp_path / 'head.log').read_text()[-2000:]}")
            time.sleep(1)
        else:
            pytest.fail("the head's job server did not come up in 120 s")
        procs.append(
            _start(
                [
                    f"--address=127.0.0.1:{gcs}",
                    f"--dashboard-agent-listen-port={free_port()}",
                    '--resources={"node2": 1}',
                    *common,
                ],
                tmp_path / "node2.log",
            )
        )
        from ray.util.state import list_nodes

        nodes: dict[str, str] = {}
        while time.time() < deadline + 60 and len(nodes) < 2:
            alive = [n for n in list_nodes(address=address) if n.state == "ALIVE"]
            nodes = {
                n.node_id: next(iter(set(n.resources_total) & {"head_node", "node2"}), "") for n in alive
            }
            time.sleep(1)
        assert sorted(nodes.values()) == ["head_node", "node2"], nodes
        yield address, nodes
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_submitted_training_places_one_worker_per_node(two_nodes, synth_world, tmp_path, capsys):
    from ray.util.state import list_actors

    from imtext.jobs import submit

    address, nodes = two_nodes
    shared = tmp_path / "shared"  # one machine: a folder both nodes reach, as an RWX volume would be
    args = [
        "train",
        "--data",
        f"synth:{synth_world}",
        "--workers",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--out",
        str(shared / "models" / "tiny"),
        # 1.5 of each node's 2 CPUs: a second worker fits on no node that already holds one
        "--set",
        "train.cpus_per_worker=1.5",
        "--set",
        f"train.storage_path={shared / 'runs'}",
        "--set",
        "data.max_train_pairs=256",
        "--set",
        "text.hidden_dim=64",
        "--set",
        "model.embed_dim=32",
        "--set",
        "model.mlp_hidden=0",
    ]
    code = submit(args, address=address, working_dir=REPO, submission_id=f"imtext-2node-{os.getpid()}")
    printed = capsys.readouterr().out
    print(printed[-3000:])
    assert code == 0
    workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker")], detail=True)
    placed = {w.node_id for w in workers}
    print("Ray Train workers on nodes:", {nodes[n]: n for n in placed})
    assert placed == set(nodes), (placed, nodes)  # one worker on the head, one on the second node
    assert (shared / "models" / "tiny" / "weights.safetensors").is_file()
    assert any((shared / "runs" / "tiny").glob("checkpoint_*"))
    assert json.loads((shared / "models" / "tiny" / "metrics.json").read_text())["history"]
