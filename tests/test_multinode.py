"""A real two-node Ray cluster on one machine, the way a launched cluster looks: a head (`ray start --head`) and a
second node (`ray start --address ...`), separate processes with their own node ids and tiny resources. On it
`imtext submit -- train --workers 2` places one Ray Train worker per node, survives losing the second node and
lands the model in the shared storage path; `imtext serve --address` puts one index shard on each node (a
custom resource both nodes declare, `imtext_shard`, as a cluster's shard nodes would) and answers searches.
Every port is chosen free; both nodes are stopped by their own process ids."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.logged_process import interrupt, start_logged, wait_for_line
from tests.ray_head import kill_session, stop_session

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


COMMON = ["--num-cpus=2", "--min-worker-port=21000", "--max-worker-port=21999"]


@dataclass
class TwoNodes:
    address: str  # the dashboard's (job submission, state API)
    gcs: str  # the cluster's (ray.init, `imtext serve --address`)
    nodes: dict[str, str]  # node id -> "head_node" / "node2" (a restarted second node adds its new id)
    logs: Path
    procs: list[subprocess.Popen]

    def start_node2(self, timeout: float = 120) -> str:
        """(Re)start the second node and return its node id once the cluster sees it alive."""
        from ray.util.state import list_nodes

        before = set(self.nodes)
        n = len(self.procs)
        self.procs.append(
            _start(
                [
                    f"--address={self.gcs}",
                    f"--dashboard-agent-listen-port={free_port()}",
                    '--resources={"node2": 1, "imtext_shard": 1}',
                    *COMMON,
                ],
                self.logs / f"node2-{n}.log",
            )
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            for node in list_nodes(address=self.address):
                if node.state == "ALIVE" and node.node_id not in before:
                    self.nodes[node.node_id] = "node2" if "node2" in node.resources_total else "head_node"
                    return node.node_id
            time.sleep(1)
        pytest.fail(f"the second node did not join within {timeout} s")

    def kill_node2(self) -> None:
        """SIGKILL the second node's `ray start` and everything in its session (raylet, workers): a lost
        machine, not a clean stop."""
        kill_session(self.procs[-1])


@pytest.fixture
def two_nodes(tmp_path):
    """A head and a second node, 2 CPUs and one `imtext_shard` slot each."""
    gcs, dash = free_port(), free_port()
    head = _start(
        [
            "--head",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--include-dashboard=true",
            '--resources={"head_node": 1, "imtext_shard": 1}',
            *COMMON,
        ],
        tmp_path / "head.log",
    )
    cluster = TwoNodes(f"http://127.0.0.1:{dash}", f"127.0.0.1:{gcs}", {}, tmp_path, [head])
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{cluster.address}/api/version", timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if head.poll() is not None:
                pytest.fail(f"ray start --head exited: {(tmp_path / 'head.log').read_text()[-2000:]}")
            time.sleep(1)
        else:
            pytest.fail("the head's job server did not come up in 120 s")
        from ray.util.state import list_nodes

        while time.time() < deadline and not cluster.nodes:
            cluster.nodes = {n.node_id: "head_node" for n in list_nodes(address=cluster.address)}
            time.sleep(0.5)
        cluster.start_node2()
        assert sorted(cluster.nodes.values()) == ["head_node", "node2"], cluster.nodes
        yield cluster
    finally:
        for proc in reversed(cluster.procs):
            stop_session(proc)


def _train_args(world: Path, shared: Path, epochs: int, max_pairs: int, *more: str) -> list[str]:
    """`imtext train` on two workers that cannot share a node, into the shared folder (models/tiny, runs/)."""
    args = ["train", "--data", f"synth:{world}", "--workers", "2", "--epochs", str(epochs)]
    args += ["--batch-size", "64", "--out", str(shared / "models" / "tiny")]
    # 1.5 of each node's 2 CPUs: a second worker fits on no node that already holds one
    sets = ["train.cpus_per_worker=1.5", f"train.storage_path={shared / 'runs'}"]
    sets += [f"data.max_train_pairs={max_pairs}", "text.hidden_dim=64", "model.embed_dim=32"]
    sets += ["model.mlp_hidden=0", *more]
    return args + [item for s in sets for item in ("--set", s)]


def _checkpoint_epochs(runs: Path) -> list[int]:
    """The epochs of the checkpoints Ray Train has written so far (each holds its epoch's metrics.json)."""
    epochs = []
    for metrics in runs.glob("checkpoint_*/metrics.json"):
        try:
            epochs.append(int(json.loads(metrics.read_text())["epoch"]))
        except (ValueError, KeyError, OSError):
            pass  # being written
    return sorted(epochs)


def _epochs_reported(lines: list[str], epochs: int) -> list[int]:
    """The epochs (0-based) whose live line `epoch  N/epochs ...` the driver has printed so far."""
    found = (re.search(rf"epoch +(\d+)/{epochs} ", line) for line in list(lines))
    return sorted({int(m.group(1)) - 1 for m in found if m})


def test_serve_puts_one_index_shard_on_each_node(two_nodes, tiny_model, synth_world, tmp_path):
    """`imtext serve --address` on the two-node cluster, as typed: each shard asks for one `imtext_shard`
    slot, so shard-0 and shard-1 land on different nodes; the API answers from both."""
    from ray.util.state import list_actors

    from imtext.collection import build_collection

    index = build_collection(tiny_model, f"synth:{synth_world}", tmp_path / "index", shards=2, use_ray=False)
    port = free_port()
    shard = "shard={ray_actor_options: {num_cpus: 0.25, resources: {imtext_shard: 1}}}"
    cmd = [str(BIN / "imtext"), "serve", "--model", str(tiny_model), "--index", str(index)]
    cmd += ["--address", two_nodes.gcs, "--port", str(port), "--no-ui", "--app-arg", shard]
    # both "nodes" are this host: one HTTP proxy (on the head), not one per node on the same port
    cmd += ["--proxy-location", "HeadOnly"]
    proc, lines = start_logged(cmd, {**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        wait_for_line(lines, proc, "Ctrl-C stops everything", timeout=300)
        api = f"http://127.0.0.1:{port}"
        info = httpx.get(f"{api}/info", timeout=30).json()
        assert info["index"]["images"]["shards"] == 2, info["index"]
        query = info["examples"][0]
        hits = httpx.post(f"{api}/search/text", json={"query": query, "k": 10}, timeout=60).json()["results"]
        assert len(hits) == 10
        replicas = list_actors(
            address=two_nodes.address, filters=[("state", "=", "ALIVE")], detail=True, limit=1000
        )
        shards = {
            a.class_name.rsplit(":", 1)[-1]: a.node_id for a in replicas if "shard-" in (a.class_name or "")
        }
        print("index shards on nodes:", {s: two_nodes.nodes[n] for s, n in sorted(shards.items())})
        assert sorted(shards) == ["shard-0", "shard-1"], shards
        assert set(shards.values()) == set(two_nodes.nodes)  # one on the head, one on the second node
    finally:
        interrupt(proc)  # Ctrl-C: the app and Serve go, the cluster stays


def test_training_survives_losing_a_node_and_resumes_from_its_last_checkpoint(
    two_nodes, synth_world, tmp_path
):
    """`imtext submit -- train --workers 2`, as typed, places one Ray Train worker on each node. Once the
    first epoch is reported (its checkpoint in the shared folder and known to Ray Train) the second node is
    killed (SIGKILL: its raylet and its Ray Train worker), and started again a few seconds later. Ray Train
    restarts the worker group when both nodes are there and the run finishes every epoch, resuming after the
    last checkpoint reported before the kill (at most the epoch in flight is lost), and the model lands in
    the shared folder."""
    from ray.util.state import list_actors

    shared = tmp_path / "shared"
    epochs = 6
    args = _train_args(synth_world, shared, epochs, 1024, "train.max_failures=3", "train.num_to_keep=10")
    cmd = [str(BIN / "imtext"), "submit", "--address", two_nodes.address, "--"] + args
    proc, lines = start_logged(cmd, {**os.environ, "RAY_AUTH_MODE": "disabled"}, cwd=REPO)
    runs = shared / "runs" / "tiny"
    try:
        # Wait for the first epoch's line: the driver prints it once Ray Train's controller has taken the
        # report and registered its checkpoint (the checkpoint's files appear a little earlier, and a kill
        # in between rightly restarts from scratch: Ray never knew of that checkpoint).
        deadline = time.time() + 300
        while not (done := _epochs_reported(lines, epochs)):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"no epoch reported within 300 s (exit {proc.poll()}):\n{''.join(lines)[-3000:]}")
            time.sleep(0.2)
        before_kill = [e for e in _checkpoint_epochs(runs) if e <= max(done)]
        assert before_kill, f"epochs {done} reported, but no checkpoint in {runs}"
        workers = list_actors(
            address=two_nodes.address,
            filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
            detail=True,
        )
        placed = {w.node_id for w in workers}
        print("Ray Train workers on nodes:", {two_nodes.nodes.get(n, n): n for n in placed})
        assert placed == set(two_nodes.nodes), (placed, two_nodes.nodes)  # one on each node
        two_nodes.kill_node2()
        print(f"killed the second node after the checkpoints of epochs {before_kill}")
        assert before_kill[-1] < epochs - 1, "training ended before the kill: give it more epochs"
        time.sleep(5)
        new_id = two_nodes.start_node2()
        print(f"the second node is back as {new_id}")
        assert proc.wait(timeout=600) == 0, "".join(lines)[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = "".join(lines)
    for epoch in range(1, epochs + 1):  # the live line of every epoch, after the restart too
        assert re.search(rf"epoch +{epoch}/{epochs} ", out), f"no line for epoch {epoch}:\n{out[-3000:]}"
    history = json.loads((shared / "models" / "tiny" / "metrics.json").read_text())["history"]
    assert [int(row["epoch"]) for row in history] == list(range(epochs))
    resumed_at = max(int(row["start_epoch"]) for row in history)
    print(f"resumed at epoch {resumed_at}; last checkpoint before the kill: epoch {before_kill[-1]}")
    assert resumed_at >= before_kill[-1] + 1  # from the last checkpoint: at most the epoch in flight lost
    assert _checkpoint_epochs(runs)[-1] == epochs - 1
    assert (shared / "models" / "tiny" / "weights.safetensors").is_file()
