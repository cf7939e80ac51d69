"""The cluster configs parse, and every `imtext ...` command they (or cluster/README.md) run exists in the CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from imtext.cli import build_parser

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
YAMLS = sorted(CLUSTER.rglob("*.yaml"))


def imtext_commands(text: str) -> list[str]:
    """Commands starting with `imtext` (YAML folded strings and shell continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", text)
    text = re.sub(r">-\n\s+", "", text)
    found = []
    for line in text.splitlines():
        for m in re.finditer(
            r"(?:^|[\s#`$(])(imtext (?:train|tune|index|serve|ui|submit|eval|features|data|demo)\b[^`\n]*)",
            line,
        ):
            command = re.sub(r"\s+#\s.*$", "", m.group(1)).strip()  # a shell comment after the command
            if len(command.split()) > 2:  # a bare `imtext submit` in prose names the command, runs nothing
                found.append(command)
    return found


def test_every_yaml_parses():
    assert len(YAMLS) >= 4
    for path in YAMLS:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_kuberay_manifests_have_their_kinds():
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in (CLUSTER / "kuberay").glob("*.yaml")}
    assert kinds == {"RayCluster", "RayJob", "RayService", "PersistentVolumeClaim"}
    service = yaml.safe_load((CLUSTER / "kuberay" / "rayservice.yaml").read_text())
    apps = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert apps[0]["import_path"] == "serve.app:build_app"


def _commands():
    cmds = []
    for path in [*YAMLS, CLUSTER / "README.md"]:
        cmds += [(path.name, c) for c in imtext_commands(path.read_text())]
    return cmds


def test_configs_run_imtext_commands():
    assert len(_commands()) >= 6


@pytest.mark.parametrize("where,command", _commands())
def test_command_exists_in_cli(where, command):
    argv = shlex.split(command)[1:]
    if argv[0] == "submit":  # the job's own command follows `--`
        argv = argv[argv.index("--") + 1 :] if "--" in argv else argv[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: `{command}` is not a valid imtext command (exit {e.code})")
