"""The typed config: every fixed-choice key is one Literal, validated wherever it is set, and the CLI's
choices come from it."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from imtext.cli import build_parser
from imtext.config import Config
from imtext.errors import ImtextError


def _choice_keys() -> dict[str, tuple]:
    keys = {}
    cfg = Config()
    for section in dataclasses.fields(cfg):
        part = getattr(cfg, section.name)
        hints = typing.get_type_hints(type(part))
        for f in dataclasses.fields(part):
            if typing.get_origin(hints[f.name]) is typing.Literal:
                keys[f"{section.name}.{f.name}"] = typing.get_args(hints[f.name])
    return keys


def test_fixed_choice_keys_are_literals():
    keys = _choice_keys()
    assert {"text.model", "text.weighting", "image.backbone", "loss.negatives", "train.lr_schedule"} <= set(
        keys
    )


@pytest.mark.parametrize("key", sorted(_choice_keys()))
def test_every_choice_key_refuses_other_values_and_lists_the_choices(key, tmp_path):
    choices = _choice_keys()[key]
    default = Config().override([])
    assert default.override({key: choices[-1]}).validate()  # every listed value is accepted
    with pytest.raises(ImtextError) as err:
        Config().override([f"{key}=bogus"])
    assert all(str(c) in str(err.value) for c in choices) and key in str(err.value)
    section, name = key.split(".")
    path = tmp_path / "c.yaml"
    path.write_text(f"{section}:\n  {name}: bogus\n")
    with pytest.raises(ImtextError, match="not one of the choices"):
        Config.load(path)
    direct = Config()
    setattr(getattr(direct, section), name, "bogus")  # set in Python, bypassing YAML
    with pytest.raises(ImtextError, match=key):
        direct.validate()


@pytest.mark.parametrize(
    "flag,key",
    [("--negatives", "loss.negatives"), ("--text-model", "text.model"), ("--backbone", "image.backbone")],
)
def test_cli_choices_are_the_configs(flag, key, capsys):
    parser = build_parser()
    for value in _choice_keys()[key]:
        assert parser.parse_args(["train", flag, value])
    with pytest.raises(SystemExit):
        parser.parse_args(["train", flag, "bogus"])
    assert "invalid choice" in capsys.readouterr().err
