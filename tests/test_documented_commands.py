"""Run what users type (#13): every `imtext ...` command line that README.md, cluster/README.md and the files
under cluster/ print, run through the installed console script the way a user types it.

Each documented command is run here, with tiny data and short runs substituted through appended flags
(`--epochs 1`, `--set ...`, free ports) or its placeholders (`ID`, `DIR`, `KIND:PATH`) filled in, never by
editing its shape; or it only names a command (`imtext train`, `imtext train --address auto ...`), and then
its `--help` must work; or it needs what this machine lacks (a remote cluster, GPUs, S3, hours) and is listed
in NOT_RUN_HERE with the reason. test_every_documented_command_is_accounted_for fails when a document gains
a command none of these covers, so a new one cannot escape unnoticed.

The commands run in a scratch folder laid out like a checkout (the README's relative paths data/synth,
runs/model and tune/spaces/... resolve there) against one Ray head this module starts on free ports (with
token authentication, as a cluster's clients use it), and share one tiny world, model and index.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.ray_head import start_head

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IMTEXT = BIN / "imtext"  # the console script of the environment running the tests
DOCS = [REPO / "README.md", REPO / "cluster" / "README.md"]
MANIFESTS = sorted(p for p in (REPO / "cluster").rglob("*") if p.is_file() and p.name != "README.md")

# Appended to every training run: tiny data, tiny model, one epoch.
TINY_MODEL = [
    "--set",
    "data.max_train_pairs=300",
    "--set",
    "text.word_dim=32",
    "--set",
    "text.hidden_dim=32",
    "--set",
    "model.embed_dim=32",
    "--set",
    "model.mlp_hidden=0",
]
TINY_TRAIN = ["--epochs", "1", *TINY_MODEL]
QUERY = "a red circle left of a blue square"

# Run by the fixtures and tests below (the value: which step runs it).
RUN = {
    "imtext data synth --out data/synth --images 2000": "data",
    "imtext data show --data KIND:PATH": "data",
    "imtext train --print-config": "data",
    "imtext train --data synth:data/synth --config synthetic --out runs/model": "train",
    "imtext eval --model runs/model --data synth:data/synth --split test": "train",
    "imtext eval --model runs/model --data synth:data/synth --split order": "train",
    "imtext index build --model runs/model --data synth:data/synth --split train --shards 2 --out runs/index": "index",
    "imtext index add --index runs/index --model runs/model --data synth:data/synth --split test": "index",
    f'imtext index search --index runs/index --text "{QUERY}"': "index",
    "imtext serve --model runs/model --index runs/index": "serve",
    "imtext serve --model DIR --index DIR": "serve",
    "imtext ui --api URL": "serve",
    "imtext ui --api http://127.0.0.1:8000": "serve",
    "imtext index remove --index runs/index --image-id ID": "remove",
    "imtext tune --space tune/spaces/default.yaml --trials 16 --data synth:data/synth --scheduler asha": "tune",
    "imtext tune --resume RUN_DIR": "tune",
    "imtext train --config runs/tune/best.yaml": "tune",
}

_REMOTE = (
    "submits to a remote cluster's job server (HEAD:8265, or kubectl port-forward / the launcher's ssh "
    "tunnel) and trains on GPUs with /data/coco on the cluster; `imtext submit` against a real local head, "
    "from a wheel install, is tests/test_wheel_submit.py"
)
_COCO = "/data/coco, /data/models and /data/runs live on the KubeRay cluster's shared volume"
_REAL = (
    "real photos: tests/test_quality_real.py runs this chain through the console script on flickr8k-762 "
    "(a minute of features and training, and its quality bar)"
)
NOT_RUN_HERE = {
    "imtext submit --address http://HEAD:8265 -- train --data coco:/data/coco --backbone resnet50 --workers 8 "
    "--gpu --out /data/models/coco": _REMOTE,
    "ray job submit --address http://HEAD:8265 --working-dir . -- imtext train ...": _REMOTE,
    "imtext submit -- train --data coco:/data/coco --backbone resnet50 --workers 4 --gpu --epochs 30 "
    "--batch-size 512 --out /data/models/coco-resnet50 --set train.storage_path=/data/runs": _REMOTE,
    "ray job submit --address $RAY_ADDRESS --working-dir . -- imtext train --data coco:/data/coco "
    "--backbone resnet50 --workers 4 --gpu --out /data/models/coco-resnet50 "
    "--set train.storage_path=/data/runs": _REMOTE,
    "imtext submit -- tune --space tune/spaces/default.yaml --trials 32 --gpus-per-trial 1 "
    "--data coco:/data/coco --run-dir /data/runs/tune/coco": _REMOTE + " (1 GPU per trial)",
    "imtext submit -- index build --model /data/models/coco-resnet50 --data coco:/data/coco --shards 8 "
    '--factory "IVF4096,PQ64" --out /data/indexes/coco-resnet50': _REMOTE + "; " + _COCO,
    "imtext submit --address http://127.0.0.1:8265 -- train --data coco:/data/coco --backbone resnet50 "
    "--workers 8 --gpu --out s3://YOUR-BUCKET/imtext/models/coco-resnet50 "
    "--set train.storage_path=s3://YOUR-BUCKET/imtext/runs": _REMOTE + "; writes to an S3 bucket",
    "imtext submit --address http://127.0.0.1:8265 -- train --data coco:/data/coco --backbone resnet50 "
    "--workers 4 --gpu --epochs 30 --batch-size 512 --out /data/models/coco-resnet50 "
    "--set train.storage_path=/data/runs": _REMOTE,
    "imtext train --data coco:/data/coco --backbone resnet50 --workers 4 --gpu --epochs 30 --batch-size 512 "
    "--out /data/models/coco-resnet50 --set train.storage_path=/data/runs": "the RayJob's entrypoint: KubeRay "
    "runs it on 4 GPU pods; " + _COCO + " (the same command on a laptop is the quickstart's train)",
    "imtext tune --storage s3://YOUR-BUCKET/imtext/tune": "keeps the experiment in an S3 bucket (credentials "
    "and a bucket); tests/test_cluster_storage.py covers URIs",
    "imtext tune --space tune/spaces/paper_grid.yaml --data synth:data/synth": "the paper's grid is 45 trials "
    "of 6 epochs per --trials (hours on 2 cores, and no flag shrinks a grid); tests/test_tune.py loads it and "
    "checks its 45 cells, and bench/paper_experiments.py runs it",
    ".venv/bin/imtext demo --fresh": "the whole chain, ~90 s even with --tiny on 2 cores; tests/test_demo.py "
    "runs `imtext demo` (tiny) through the console script, then a second run that reuses what exists",
    ".venv/bin/imtext demo --data coco:DIR": "the whole chain on real photos, ~100 s with --tiny (features "
    "of every photo with EfficientNet-Lite0); tests/test_demo.py runs the demo on the synthetic world",
    "imtext features --data flickr8k:DIR --backbone efficientnet_lite0 --out runs/f8k.parquet": _REAL,
    "imtext train --data flickr8k:DIR --features runs/f8k.parquet --backbone efficientnet_lite0 "
    "--out runs/f8k-model": _REAL,
    "imtext eval --model runs/f8k-model --data flickr8k:DIR --features runs/f8k.parquet --split test "
    "--baseline": _REAL,
    "imtext serve --address HEAD:6379 --model /data/models/coco-resnet50 --index /data/indexes/coco-resnet50 "
    "--app-arg 'shard={ray_actor_options: {num_cpus: 1, resources: {imtext_shard: 1}}}'": _REMOTE
    + "; tests/test_multinode.py runs it on a two-node cluster (one shard per node)",
    "imtext train --resume": "continues an interrupted run: a second Ray Train run (~25 s) that "
    "tests/test_ray_train.py already runs in-process",
}


# ---- finding the documented commands -------------------------------------------------------------------


def _subcommands() -> list[str]:
    from imtext.cli import build_parser

    parser = build_parser()
    for action in parser._actions:  # argparse keeps the subparsers in a private list; no public accessor
        if isinstance(getattr(action, "choices", None), dict):
            return sorted(action.choices)
    raise AssertionError("imtext's parser has no subcommands")


COMMANDS = "|".join(_subcommands())
START = re.compile(rf"(?<![\w./-])(?:\.venv/bin/)?imtext (?:{COMMANDS})\b")
RAY_JOB = re.compile(r"\bray job submit\b")
SHELL_FENCES = {"bash", "sh", "shell", "console"}


def command_in(text: str) -> str | None:
    """The command in one line of shell or one code span: from `imtext <command>` (or the `ray job submit`
    that wraps it) to the end, without a trailing shell comment, whitespace collapsed."""
    m = START.search(text)
    if not m:
        return None
    begin = m.start()
    wrappers = list(RAY_JOB.finditer(text, 0, begin))
    if wrappers:
        begin = wrappers[-1].start()
    return " ".join(re.sub(r"\s+#\s.*$", "", text[begin:]).split())


def _comment_commands(comment: str) -> list[str]:
    """A comment holds commands in code spans, or (without any) as plain text (`# the same as: ray job ...`)."""
    spans = re.findall(r"`([^`\n]+)`", comment)
    found = [command_in(s) for s in spans] if spans else [command_in(comment)]
    return [c for c in found if c]


def markdown_commands(text: str) -> list[str]:
    """Commands in shell code blocks (lines; continuations joined; the comments' code spans too) and in the
    prose's code spans that start with `imtext`."""
    fence = re.compile(r"^([ \t]*)```([^\n]*)\n(.*?)^\1```[ \t]*$", re.S | re.M)
    found: list[str] = []
    for m in fence.finditer(text):
        if m.group(2).strip() not in SHELL_FENCES:
            continue  # diagrams, YAML, Python
        for line in re.sub(r"\\\n\s*", " ", m.group(3)).splitlines():
            code, _, comment = re.sub(r"^\s*#", " #", line).partition(" # ")
            if (cmd := command_in(code.strip())) is not None:
                found.append(cmd)
            found += _comment_commands(comment)
    for span in re.findall(r"`([^`\n]+)`", fence.sub("", text)):
        if START.match(span.strip()):
            found.append(command_in(span.strip()))
    return found


def _strings(value: object):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def manifest_commands(path: Path) -> list[str]:
    """Commands in a manifest's comments and in its string values (a RayJob's entrypoint)."""
    text = path.read_text()
    found = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            found += _comment_commands(line.strip().lstrip("#"))
    if path.suffix in (".yaml", ".yml"):
        for doc in yaml.safe_load_all(text):
            for s in _strings(doc):
                if START.match(s.strip()):
                    found.append(command_in(" ".join(s.split())))
    return found


def documented_commands() -> dict[str, set[str]]:
    """Every documented command -> the files that print it."""
    where: dict[str, set[str]] = {}
    sources = [(p, markdown_commands(p.read_text())) for p in DOCS]
    sources += [(p, manifest_commands(p)) for p in MANIFESTS]
    for path, commands in sources:
        for cmd in commands:
            where.setdefault(cmd, set()).add(str(path.relative_to(REPO)))
    return where


def only_names_a_command(cmd: str) -> bool:
    """`imtext index add` or `imtext train --address auto ...`: names a command (and maybe some flags), runs
    nothing; its --help must work."""
    words = shlex.split(cmd)
    if not words[0].endswith("imtext"):
        return False
    return words[-1] == "..." or all(not w.startswith("-") for w in words[1:])


def test_every_documented_command_is_accounted_for():
    """Each documented command is run here, names a command (its --help runs), or is in NOT_RUN_HERE; and
    the two lists name only commands that the documents print (no stale entries)."""
    found = documented_commands()
    assert len(found) >= 25, sorted(found)
    assert not set(RUN) & set(NOT_RUN_HERE)
    unknown = {c: sorted(w) for c, w in found.items() if c not in RUN and c not in NOT_RUN_HERE}
    unknown = {c: w for c, w in unknown.items() if not only_names_a_command(c)}
    assert not unknown, (
        "documented commands that this module neither runs nor lists in NOT_RUN_HERE (add each to RUN and a "
        f"test, or to NOT_RUN_HERE with the reason): {unknown}"
    )
    stale = (set(RUN) | set(NOT_RUN_HERE)) - set(found)
    assert not stale, f"listed here but no longer documented: {sorted(stale)}"
    not_local = {c for c in found if c not in RUN and not only_names_a_command(c)}
    assert not_local == set(NOT_RUN_HERE)


def test_the_extractor_reads_shell_blocks_spans_comments_and_manifests():
    md = (
        "Run `imtext eval --model m --data synth:d` or `imtext_x`.\n"
        "```bash\nimtext index build --model m \\\n    --data synth:d --out i   # a comment\n"
        "# the same as: ray job submit --working-dir . -- imtext train --x 1\n"
        "make demo   # runs `imtext demo`: all of it\n```\n"
        "```\nsources -> index   imtext/index/   (imtext index)\n```\n"
    )
    assert markdown_commands(md) == [
        "imtext index build --model m --data synth:d --out i",
        "ray job submit --working-dir . -- imtext train --x 1",
        "imtext demo",
        "imtext eval --model m --data synth:d",
    ]
    assert only_names_a_command("imtext index add") and only_names_a_command(
        "imtext train --address auto ..."
    )
    assert not only_names_a_command("imtext train --print-config")
    assert not only_names_a_command("ray job submit --address A -- imtext train ...")


# ---- running them ----------------------------------------------------------------------------------------


Subs = tuple[tuple[str, str], ...]  # placeholders filled in: (old, new), each replaced once, in order
Also = tuple[tuple[str, Subs], ...]  # other documented forms of the same run, with their own placeholders


@dataclass
class Session:
    """The scratch checkout, the environment every command gets, what ran and how long it took."""

    cwd: Path
    env: dict[str, str]
    ran: set[str] = field(default_factory=set)
    timings: list[tuple[str, float]] = field(default_factory=list)
    running: list[Command] = field(default_factory=list)
    pending: dict[str, Any] = field(default_factory=dict)  # started early, finished by a later test

    def argv(self, command: str, subs: Subs = (), extra: tuple[str, ...] = ()) -> list[str]:
        """The documented command with its placeholders filled in (each (old, new) once, in order) and flags
        appended: the shape stays the user's."""
        text = command
        for old, new in subs:
            assert old in text, f"{old!r} is not in `{command}`"
            text = text.replace(old, shlex.quote(new), 1)
        argv = shlex.split(text)
        assert argv[0] in ("imtext", ".venv/bin/imtext"), command
        return [str(IMTEXT), *argv[1:], *extra]

    def start(self, command: str, subs: Subs = (), extra: tuple[str, ...] = (), also: Also = ()) -> Command:
        """Start a documented command in the background. Each of `also` (another documented form, its own
        placeholders filled in) must come to the very same argv, so this one run covers them all."""
        argv = self.argv(command, subs, extra)
        for other, other_subs in also:
            assert self.argv(other, other_subs, extra) == argv, f"`{other}` does not run as `{command}`"
        cmd = Command((command, *(c for c, _ in also)), argv, self)
        self.running.append(cmd)
        return cmd

    def run(self, command: str, subs: Subs = (), extra: tuple[str, ...] = (), also: Also = ()) -> Command:
        """Run a documented command to its end: exit 0 and no traceback, or the test fails with its output."""
        return self.start(command, subs, extra, also).finish()


class Command:
    """A documented command running through the console script in its own process group, its output
    collected as it comes."""

    def __init__(self, commands: tuple[str, ...], argv: list[str], session: Session) -> None:
        self.commands, self.argv, self.session = commands, argv, session
        self.lines: list[str] = []
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            argv,
            cwd=session.cwd,
            env=session.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def _fail(self, why: str) -> None:
        pytest.fail(f"`{self.commands[0]}` (run as `{shlex.join(self.argv)}`) {why}:\n{self.out[-5000:]}")

    def _succeeded(self) -> Command:
        self._pump.join(timeout=10)
        self.session.timings.append((self.commands[0], time.perf_counter() - self.t0))
        if self.proc.returncode != 0:
            self._fail(f"exited {self.proc.returncode}")
        if "Traceback" in self.out:
            self._fail("printed a traceback")
        self.session.ran.update(self.commands)
        return self

    def finish(self, timeout: float = 300) -> Command:
        """Wait for a command that ends by itself."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self._fail(f"did not end within {timeout} s")
        return self._succeeded()

    def stop(self) -> Command:
        """Ctrl-C, as a user stops a server; it must end, with exit 0, within a minute."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
                self._fail("did not stop within 60 s of Ctrl-C")
        return self._succeeded()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def wait_http(self, url: str, timeout: float = 240) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._pump.join(timeout=5)
                self._fail(f"exited {self.proc.returncode} before {url} answered")
            try:
                r = httpx.get(url, timeout=5)
                if r.status_code == 200:
                    return r
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self._fail(f"never got {url} to answer within {timeout} s")

    def wait_line(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.out:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self._fail(f"never printed {text!r}")
            time.sleep(0.2)


# ---- the cluster and the artifacts the tests share ---------------------------------------------------


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A scratch folder laid out like a checkout (tune/spaces/), a Ray head with token auth, and the
    environment every command gets (RAY_ADDRESS and the token, as cluster/README.md has clients export)."""
    cwd = tmp_path_factory.mktemp("user")
    shutil.copytree(REPO / "tune" / "spaces", cwd / "tune" / "spaces")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
        GRADIO_ANALYTICS_ENABLED="False",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
    )
    head = start_head(BIN / "ray", env, cwd.parent / "ray-head.log", num_cpus=6)
    s = Session(cwd=cwd, env={**env, "RAY_ADDRESS": head.address})
    try:
        yield s
        print("\n".join(f"{t:6.1f} s  {c}" for c, t in s.timings))
    finally:
        for cmd in s.running:
            cmd.kill()
        head.stop()


@pytest.fixture(scope="module")
def world(session) -> Path:
    """The synthetic world (200 scenes instead of 2000); the Tune search starts on it at once, beside the
    training run, and test_tune_... collects it."""
    ran = session.run("imtext data synth --out data/synth --images 2000", extra=("--images", "200"))
    assert re.search(r"train\s*│\s*160\s*│\s*800", ran.out), ran.out  # the split table: 160 of 200 scenes
    session.pending["tune"] = session.start(
        "imtext tune --space tune/spaces/default.yaml --trials 16 --data synth:data/synth --scheduler asha",
        extra=("--trials", "2", "--concurrent", "2", *TINY_TRAIN),
    )
    return session.cwd / "data" / "synth"


@pytest.fixture(scope="module")
def model(session, world) -> Path:
    """`imtext train` on the head (Ray Train, one worker); the evaluations start at once, beside the index."""
    ran = session.run(
        "imtext train --data synth:data/synth --config synthetic --out runs/model", extra=tuple(TINY_TRAIN)
    )
    out = session.cwd / "runs" / "model"
    assert f"model directory: {out}" in ran.out
    assert "text -> image (search)" in ran.out  # the R@K table
    for name in ("config.yaml", "weights.safetensors", "vocab.json", "metrics.json"):
        assert (out / name).is_file(), name
    for split in ("test", "order"):
        session.pending[f"eval {split}"] = session.start(
            f"imtext eval --model runs/model --data synth:data/synth --split {split}"
        )
    return out


@pytest.fixture(scope="module")
def index(session, model) -> Path:
    ran = session.run(
        "imtext index build --model runs/model --data synth:data/synth --split train --shards 2 --out runs/index"
    )
    assert re.search(r"images\s*│\s*160\s*│\s*2\s*│", ran.out), ran.out
    ran = session.run(
        "imtext index add --index runs/index --model runs/model --data synth:data/synth --split test"
    )
    assert re.search(r"images\s*│\s*180 \(\+20\)", ran.out), ran.out
    return session.cwd / "runs" / "index"


def search(session: Session) -> list[str]:
    """The README's `index search`; the image ids it printed, best first."""
    ran = session.run(f'imtext index search --index runs/index --text "{QUERY}"')
    ids = re.findall(r"│\s*\d+\s*│\s*[-\d.]+\s*│\s*(img_\d+)\s*│", ran.out)
    assert "data/synth/images/img_" in ran.out, ran.out  # the path column
    return ids


# ---- the tests, in the README's order ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.ray
def test_the_names_and_help_of_every_mentioned_command(session):
    """Prose that names a command (`imtext index add`, `imtext train --address auto ...`): it exists, with
    those flags, and its --help works."""
    mentioned = sorted(c for c in documented_commands() if only_names_a_command(c))
    assert "imtext index add" in mentioned
    for cmd in mentioned:
        argv = [str(IMTEXT), *(w for w in shlex.split(cmd)[1:] if w != "..."), "--help"]
        proc = subprocess.run(argv, env=session.env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage: imtext" in proc.stdout, (cmd, proc.stdout, proc.stderr)
        session.ran.add(cmd)


@pytest.mark.slow
@pytest.mark.ray
def test_data_synth_show_and_print_config(session, world):
    ran = session.run("imtext data show --data KIND:PATH", subs=(("KIND:PATH", "synth:data/synth"),))
    assert re.search(r"order\s*│\s*40\s*│\s*200", ran.out), ran.out
    ran = session.run("imtext train --print-config")
    cfg = yaml.safe_load(ran.out)
    assert {"data", "text", "image", "model", "loss", "train"} <= set(cfg), ran.out


@pytest.mark.slow
@pytest.mark.ray
def test_train_then_index_build_add_search(session, index):
    ids = search(session)
    assert len(ids) == 10 and len(set(ids)) == 10, ids  # k=10 distinct images, ranked
    session.pending["first hits"] = ids


@pytest.mark.slow
@pytest.mark.ray
def test_eval_on_test_and_word_order_splits(session, model):
    for split in ("test", "order"):
        ran = session.pending.pop(f"eval {split}").finish()
        assert re.search(r"image -> text \(annotation\)\s*│\s*[\d.]+", ran.out), ran.out
        assert "rsum" in ran.out
        # only the mirrored pairs' split says how often a caption picks its own image over its twin
        told_apart = re.search(r"mirrored pairs told apart: ([\d.]+)", ran.out)
        assert (told_apart is not None) == (split == "order"), ran.out
        assert told_apart is None or 0.0 <= float(told_apart.group(1)) <= 1.0


@pytest.mark.slow
@pytest.mark.ray
def test_serve_answers_the_api_and_the_page_and_ui_serves_it_too(session, index):
    """`imtext serve` as the README prints it (free ports instead of 8000/7860, an admin token and
    --index-root), its API's promises checked over HTTP (`curl .../healthz` among them), and beside it
    `imtext ui --api URL` alone against that API: its page answers and a search through it finds images.
    Ctrl-C ends both with exit 0."""
    api_port, ui_port, page_port = free_port(), free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    admin = secrets.token_hex(8)
    session.env["IMTEXT_ADMIN_TOKEN"] = admin
    try:
        serve = session.start(
            "imtext serve --model runs/model --index runs/index",
            extra=("--port", str(api_port), "--ui-port", str(ui_port), "--index-root", "runs"),
            also=(("imtext serve --model DIR --index DIR", (("DIR", "runs/model"), ("DIR", "runs/index"))),),
        )
    finally:
        del session.env["IMTEXT_ADMIN_TOKEN"]
    page = session.start(  # the page alone starts while the API does; it says so until the API answers
        "imtext ui --api URL",
        subs=(("URL", api),),
        extra=("--port", str(page_port)),
        also=(("imtext ui --api http://127.0.0.1:8000", (("http://127.0.0.1:8000", api),)),),
    )
    serve.wait_http(f"http://127.0.0.1:{ui_port}/")  # serve's own page comes up after the API
    serve.wait_line(f"page     http://127.0.0.1:{ui_port}/")
    assert f"API      {api}" in serve.out
    with httpx.Client(base_url=api, timeout=30) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        res = http.post("/search/text", json={"query": QUERY, "k": 5})
        assert res.status_code == 200, res.text
        hits = res.json()["results"]
        assert len(hits) == 5 and all("?v=" in h["image_url"] for h in hits), hits
        img = http.get(hits[0]["image_url"])
        assert img.status_code == 200 and img.headers["content-type"].startswith("image/")
        res = http.post("/search/text", json={"query": "zqxj vbnm", "k": 5})
        assert res.status_code == 400, res.text
        err = res.json()["error"]
        assert err["code"] == "no_known_words" and err["unknown_words"] == ["zqxj", "vbnm"], err
        auth = {"Authorization": f"Bearer {admin}"}
        res = http.post("/admin/reload", json={"index_dir": str(session.cwd / "data")}, headers=auth)
        assert (res.status_code, res.json()["error"]["code"]) == (403, "outside_index_root"), res.text
        res = http.post("/admin/reload", json={"index_dir": "index"}, headers=auth)  # runs/index, relative
        assert res.status_code == 200, res.text

    html = page.wait_http(f"http://127.0.0.1:{page_port}/")
    assert "gradio" in html.text.lower()
    from gradio_client import Client

    client = Client(f"http://127.0.0.1:{page_port}/", verbose=False, download_files=False)
    gallery, status, _footer = client.predict(QUERY, 5, api_name="/search_text")
    assert len(gallery) == 5, (status, gallery)
    page.stop()
    serve.stop()


@pytest.mark.slow
@pytest.mark.ray
def test_serve_refuses_an_index_root_that_does_not_hold_the_index(session, index):
    """`--index-root` is checked before Ray or Serve start: a root outside which --index lies, or no folder."""
    for root, says in (("data", "is outside --index-root"), ("nowhere", "is not a folder")):
        argv = session.argv(
            "imtext serve --model runs/model --index runs/index", extra=("--index-root", root)
        )
        proc = subprocess.run(
            argv, cwd=session.cwd, env=session.env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode != 0 and says in proc.stdout + proc.stderr, (proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stdout + proc.stderr and "Connecting to" not in proc.stderr


@pytest.mark.slow
@pytest.mark.ray
def test_index_remove_takes_an_image_out(session, index):
    before = session.pending.get("first hits") or search(session)
    ran = session.run("imtext index remove --index runs/index --image-id ID", subs=(("ID", before[0]),))
    assert re.search(r"images\s*│\s*179 \(-1\)", ran.out), ran.out
    after = search(session)
    assert before[0] not in after and after[0] == before[1], (before, after)


@pytest.mark.slow
@pytest.mark.ray
def test_tune_then_resume_then_retrain_the_best(session, world):
    """The search (2 trials of 1 epoch) started beside the training run; then `--resume` of its run folder
    and the retraining of the best trial (in-process: `--workers 0`, the README's no-Ray mode)."""
    ran = session.pending.pop("tune").finish()
    run_dir = session.cwd / "runs" / "tune"
    assert f"retrain the best: imtext train --config {run_dir / 'best.yaml'}" in ran.out
    for name in ("best.yaml", "results.csv", "results.parquet", "plot.png"):
        assert (run_dir / name).is_file(), name
    ran = session.run("imtext tune --resume RUN_DIR", subs=(("RUN_DIR", "runs/tune"),))
    assert f"run folder: {run_dir}" in ran.out
    ran = session.run("imtext train --config runs/tune/best.yaml", extra=("--workers", "0"))
    out = Path(yaml.safe_load((run_dir / "best.yaml").read_text())["train"]["out"])
    assert f"model directory: {out}" in ran.out and (out / "weights.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.ray
def test_every_runnable_command_ran(session, request):
    """The tests above ran every command of RUN (when the whole module ran)."""
    here = [i for i in request.session.items if i.module is request.module]
    if len(here) < len([n for n in dir(request.module) if n.startswith("test_")]):
        pytest.skip("only part of this module was selected")
    missing = set(RUN) - session.ran
    assert not missing, f"documented commands no test ran: {sorted(missing)}"
