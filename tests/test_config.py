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


def test_swap_negatives_need_word_groups():
    """loss.swap_negatives without loss.swap_words (or with a malformed group) fails at validation, in the
    command that was typed, not later in a Ray worker."""
    base = Config().override({"loss.swap_negatives": 1, "text.sentence_encoder": "none"})
    with pytest.raises(ImtextError, match="swap_words is empty"):
        base.validate()
    with pytest.raises(ImtextError, match="in two groups"):
        base.override({"loss.swap_words": "red green; green blue"}).validate()
    with pytest.raises(ImtextError, match="swap_negatives must be >= 0"):
        Config().override({"loss.swap_negatives": -1}).validate()
    assert base.override({"loss.swap_words": "synthetic"}).validate().loss.swap_negatives == 1


def test_sentence_encoder_settings_are_checked_at_validation():
    """A name that cannot be a sentence encoder, a weight <= 0, or word swaps beside it (swapped captions
    are made every step; sentence vectors once) fail when the config is read, with what to use instead."""
    assert Config().text.sentence_encoder == "minilm"
    with pytest.raises(ImtextError, match="use 'none', 'minilm'"):
        Config().override({"text.sentence_encoder": "mini-lm"}).validate()
    with pytest.raises(ImtextError, match="sentence_weight must be > 0"):
        Config().override({"text.sentence_weight": 0}).validate()
    swaps = {"loss.swap_negatives": 1, "loss.swap_words": "synthetic"}
    with pytest.raises(ImtextError, match="swap_negatives needs text.sentence_encoder=none"):
        Config().override(swaps).validate()
    hub = Config().override({"text.sentence_encoder": "sentence-transformers/all-mpnet-base-v2"})
    assert hub.validate().text.sentence_encoder == "sentence-transformers/all-mpnet-base-v2"


def test_serve_app_args_are_typed_and_checked_before_ray_starts():
    """`imtext serve --app-arg KEY=VALUE`: YAML values into serve.app's AppArgs; unknown keys, bad types
    and the keys imtext serve's own flags set are refused with the reason, before any Ray start."""
    from imtext.cli.apps import parse_app_args

    shard = "shard={ray_actor_options: {num_cpus: 0.5, resources: {imtext_shard: 1}}}"
    assert parse_app_args(["shard_slots=4", shard]) == {
        "shard_slots": 4,
        "shard": {"ray_actor_options": {"num_cpus": 0.5, "resources": {"imtext_shard": 1}}},
    }
    for bad, message in [
        (["shards=2"], "unknown; known: "),
        (["shard_slots=many"], "shard_slots"),
        (["model_dir=/x"], "own flag"),
        (["shard_slots"], "KEY=VALUE"),
        (["shard={a: [}"], "not YAML"),
    ]:
        with pytest.raises(ImtextError, match=message):
            parse_app_args(bad)


def test_floats_in_exponent_notation_are_numbers_in_flags_and_yaml(tmp_path):
    """PyYAML reads `1e-3` (no dot) as a string: `--set train.lr=1e-3` and `lr: 1e-3` in a file once failed
    with "train.lr must be float"."""
    assert Config().override(["train.lr=1e-3", "loss.temperature=5E-2"]).train.lr == pytest.approx(1e-3)
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 2e-4\n")
    assert Config.load(path).train.lr == pytest.approx(2e-4)
    with pytest.raises(ImtextError, match="train.lr must be float"):
        Config().override(["train.lr=fast"])
