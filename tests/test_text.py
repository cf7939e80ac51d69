"""The text branch: tokenizer, vocabulary (idf, persistence), featurizers and encoders."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from imtext.config import TextConfig
from imtext.errors import ImtextError
from imtext.text import (
    TEXT_KINDS,
    TextFeaturizer,
    Vocab,
    build_text_encoder,
    collate_texts,
    tokenize,
)

torch.set_num_threads(1)

CORPUS = ["A red circle.", "a blue square", "A red square!"]


@pytest.fixture
def vocab() -> Vocab:
    return Vocab.build(
        ["a red circle left of a blue square", "a blue square right of a red circle", "a green triangle"]
    )


def _cfg(kind: str, **kw) -> TextConfig:
    base = dict(model=kind, hash_buckets=64, word_dim=8, hidden_dim=6, bidirectional=True, max_len=12)
    return TextConfig(**{**base, **kw})


# ---- tokenize -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("A Red circle.", ["a", "red", "circle"]),
        ("Two dogs, 3 cats; and a bird!", ["two", "dogs", "3", "cats", "and", "a", "bird"]),
        ("A man's hat isn't 'blue'", ["a", "man's", "hat", "isn't", "blue"]),
        ("don\u2019t stop", ["don't", "stop"]),
        ("well-known state_of-the-art", ["well", "known", "state", "of", "the", "art"]),
        ("Café crème", ["café", "crème"]),
        ("  ...  ", []),
        ("", []),
    ],
)
def test_tokenize(text, words):
    assert tokenize(text) == words


# ---- vocab ----------------------------------------------------------------------------------------
def test_vocab_ids_min_count_and_idf():
    v = Vocab.build(CORPUS, min_count=2)
    # counts: a 3, red 2, square 2, circle 1, blue 1 -> kept by frequency then alphabetically
    assert v.words == ["<pad>", "<unk>", "a", "red", "square"]
    assert len(v) == 5
    assert v.ids(["a", "blue", "square", "zebra"]) == [2, 1, 4, 1]
    # idf = log((1 + N) / (1 + df)) + 1 with N = 3 captions
    expected = [0.0, 1.0, math.log(4 / 4) + 1, math.log(4 / 3) + 1, math.log(4 / 3) + 1]
    assert v.idf.dtype.name == "float32"
    assert v.idf.tolist() == pytest.approx(expected, rel=1e-6)

    v1 = Vocab.build(CORPUS)
    assert v1.words == ["<pad>", "<unk>", "a", "red", "square", "blue", "circle"]
    assert v1.idf[6] == pytest.approx(math.log(4 / 2) + 1)


def test_vocab_counts_a_word_once_per_caption_for_df():
    v = Vocab.build(["red red red", "blue"])
    assert v.df[v.id("red")] == 1
    assert v.idf[v.id("red")] == pytest.approx(math.log(3 / 2) + 1)


def test_vocab_does_not_depend_on_caption_order():
    assert Vocab.build(CORPUS).words == Vocab.build(reversed(CORPUS)).words


def test_vocab_save_load_roundtrip(tmp_path):
    v = Vocab.build(CORPUS, min_count=2)
    path = tmp_path / "model" / "vocab.json"
    v.save(path)
    back = Vocab.load(path)
    assert back.words == v.words
    assert back.idf.tolist() == v.idf.tolist()
    assert back.min_count == 2 and back.num_docs == 3
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temporary left behind


def test_vocab_load_errors(tmp_path):
    with pytest.raises(ImtextError, match="not found"):
        Vocab.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ImtextError, match="not a readable vocabulary"):
        Vocab.load(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "imtext-vocab/1", "words": ["a"], "df": [1, 2], "num_docs": 2}))
    with pytest.raises(ImtextError, match="wrong.json"):
        Vocab.load(wrong)


# ---- featurizers ----------------------------------------------------------------------------------
def test_bigram_ids_use_a_stable_crc32_hash():
    v = Vocab.build(CORPUS)  # a=2 red=3 square=4 blue=5 circle=6
    f = TextFeaturizer("bigram", v, hash_buckets=1000)
    # zlib.crc32(b"2\x1fa\x1fred") == 4179117282, computed once; 4179117282 % 1000 == 282
    a_red = len(v) + 282
    ids = f("a red circle")
    assert a_red in ids
    assert Counter(ids) == Counter([2, 3, 6, a_red, len(v) + f_bucket(f, "red", "circle")])
    assert all(len(v) <= i < len(v) + 1000 for i in ids if i >= len(v))
    assert f.num_features == len(v) + 1000


def f_bucket(f: TextFeaturizer, *tokens: str) -> int:
    from imtext.text import ngram_bucket

    return ngram_bucket("2", tokens, f.hash_buckets)


def test_ngram_feature_counts(vocab):
    caption = "a red circle left of a blue square"  # 8 words
    n = {kind: len(TextFeaturizer(kind, vocab, hash_buckets=1 << 16)(caption)) for kind in TEXT_KINDS}
    assert n == {"bow": 8, "gru": 8, "bigram": 8 + 7, "trigram": 8 + 7 + 6, "skipgram": 8 + 7 + 6 + 6}


def test_bag_ignores_word_order_and_ngrams_do_not(vocab):
    x, y = "a red circle left of a blue square", "a blue square left of a red circle"
    bow = TextFeaturizer("bow", vocab)
    assert Counter(bow(x)) == Counter(bow(y))
    for kind in ("bigram", "trigram", "skipgram"):
        f = TextFeaturizer(kind, vocab)
        assert Counter(f(x)) != Counter(f(y)), kind
    gru = TextFeaturizer("gru", vocab)
    assert gru(x) == vocab.ids(tokenize(x)) and gru(x) != gru(y)


def test_featurizer_unknown_words_empty_captions_and_truncation(vocab):
    gru = TextFeaturizer("gru", vocab, max_len=3)
    assert gru("") == [1] and gru("?!") == [1]
    assert gru("a zebra circle blue square") == [vocab.id("a"), 1, vocab.id("circle")]
    for kind in TEXT_KINDS:
        assert TextFeaturizer(kind, vocab)("") == [1]
    # out-of-vocabulary words become <unk> before hashing, so two unknown words share n-grams
    big = TextFeaturizer("bigram", vocab)
    assert big("a zebra") == big("a unicorn")
    with pytest.raises(ImtextError, match="bow, bigram"):
        TextFeaturizer("lstm", vocab)


def test_feature_weights(vocab):
    f = TextFeaturizer("bigram", vocab, hash_buckets=10)
    counts = f.feature_weights("counts")
    assert counts.shape == (len(vocab) + 10,)
    assert counts[0] == 0 and torch.all(counts[1:] == 1)
    tfidf = f.feature_weights("tfidf")
    assert tfidf[: len(vocab)].tolist() == pytest.approx(vocab.idf.tolist())
    words = vocab.idf[2:].tolist()
    assert tfidf[len(vocab) :].tolist() == pytest.approx([sum(words) / len(words)] * 10)
    assert TextFeaturizer("bow", vocab).feature_weights("tfidf").shape == (len(vocab),)
    with pytest.raises(ImtextError, match="counts, tfidf"):
        f.feature_weights("bm25")


def test_collate_texts():
    ids, lengths = collate_texts([[5, 6, 7], [8], [9, 10]])
    assert ids.dtype == torch.long and lengths.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert lengths.tolist() == [3, 1, 2]
    with pytest.raises(ValueError):
        collate_texts([])


# ---- encoders -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_encoder_shapes_and_gradients(vocab, kind):
    torch.manual_seed(0)
    f = TextFeaturizer(kind, vocab, hash_buckets=64, max_len=12)
    enc = build_text_encoder(_cfg(kind), f)
    ids, lengths = f.batch(["a red circle", "a blue square right of a green triangle", ""])
    out = enc(ids, lengths)
    assert enc.out_dim == (12 if kind == "gru" else 8)
    assert out.shape == (3, enc.out_dim)
    assert torch.isfinite(out).all()
    out.pow(2).sum().backward()
    # every parameter gets a gradient (DDP without find_unused_parameters)
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    emb = enc.embed.weight if kind == "gru" else enc.bag.weight
    assert emb.grad[0].abs().sum() == 0  # padding row never learns


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_padding_does_not_change_a_caption(vocab, kind):
    torch.manual_seed(1)
    f = TextFeaturizer(kind, vocab, hash_buckets=64, max_len=12)
    enc = build_text_encoder(_cfg(kind), f).eval()
    x = "a red circle"
    longer = "a blue square right of a green triangle left of a circle"
    with torch.no_grad():
        alone = enc(*f.batch([x]))[0]
        padded = enc(*f.batch([longer, x]))[1]
        again = enc(*f.batch([longer, x]))[1]
    torch.testing.assert_close(alone, padded, rtol=1e-5, atol=1e-6)
    assert torch.equal(padded, again)  # deterministic in eval


def test_bag_is_l2_normalised_weighted_counts(vocab):
    f = TextFeaturizer("bow", vocab)
    enc = build_text_encoder(_cfg("bow", weighting="counts", word_dim=len(vocab)), f)
    with torch.no_grad():
        enc.bag.weight.copy_(torch.eye(len(vocab)))  # output = the normalised bag vector itself
        out = enc(*f.batch(["red red circle"]))[0]
    expected = torch.zeros(len(vocab))
    expected[vocab.id("red")], expected[vocab.id("circle")] = 2 / math.sqrt(5), 1 / math.sqrt(5)
    torch.testing.assert_close(out, expected)

    enc = build_text_encoder(_cfg("bow", weighting="tfidf", word_dim=len(vocab)), f)
    with torch.no_grad():
        enc.bag.weight.copy_(torch.eye(len(vocab)))
        out = enc(*f.batch(["red red green"]))[0]
    r, g = 2 * float(vocab.idf[vocab.id("red")]), float(vocab.idf[vocab.id("green")])
    expected = torch.zeros(len(vocab))
    expected[vocab.id("red")], expected[vocab.id("green")] = r / math.hypot(r, g), g / math.hypot(r, g)
    torch.testing.assert_close(out, expected)


def test_encoder_rebuilds_from_vocab_config_and_state_dict(vocab, tmp_path):
    torch.manual_seed(2)
    cfg = _cfg("skipgram", weighting="tfidf")
    enc = build_text_encoder(cfg, TextFeaturizer.from_config(cfg, vocab)).eval()
    assert set(enc.state_dict()) == {"bag.weight"}  # feature weights are derived, not stored
    vocab.save(tmp_path / "vocab.json")
    f2 = TextFeaturizer.from_config(cfg, Vocab.load(tmp_path / "vocab.json"))
    torch.manual_seed(3)
    enc2 = build_text_encoder(cfg, f2).eval()
    enc2.load_state_dict(enc.state_dict())
    batch = f2.batch(["a green circle right of a red square"])
    with torch.no_grad():
        assert torch.equal(enc(*batch), enc2(*batch))


def test_build_text_encoder_rejects_mismatched_featurizer(vocab):
    with pytest.raises(ImtextError, match="featurizer"):
        build_text_encoder(_cfg("gru"), TextFeaturizer("bow", vocab))
    with pytest.raises(ImtextError, match="hash_buckets"):
        build_text_encoder(_cfg("bigram", hash_buckets=32), TextFeaturizer("bigram", vocab, hash_buckets=64))


# ---- word-swap hard negatives ---------------------------------------------------------------------------------


def test_word_swap_replaces_one_word_by_another_of_its_group():
    import random

    from imtext.text.swap import WordSwap, parse_groups

    swap = WordSwap(parse_groups("red, green blue; circle square ;left right"))
    rng = random.Random(0)
    caption = "A red circle on the left."
    seen = set()
    for _ in range(200):
        out = swap(caption, rng)
        before, after = tokenize(caption), out.split()
        changed = [(a, b) for a, b in zip(before, after) if a != b]
        assert len(after) == len(before) and len(changed) == 1, out
        a, b = changed[0]
        assert swap.group_of[a] == swap.group_of[b]
        seen.add(b)
    assert seen == {"green", "blue", "square", "right"}  # every alternative comes up
    assert swap("a dog on a beach", rng) is None  # nothing to swap


def test_swap_groups_synthetic_and_errors():
    from imtext.data.synth import COLORS, SHAPES
    from imtext.text.swap import parse_groups

    groups = parse_groups("synthetic")
    assert tuple(COLORS) in groups and SHAPES in groups
    for bad, message in [
        ("red", "at least two words"),
        ("red green; green blue", "in two groups"),
        ("red-ish green", "not one word"),
        (" ; ", "empty"),
    ]:
        with pytest.raises(ImtextError, match=message):
            parse_groups(bad)


# ---- flipped images, mirrored captions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "caption, mirrored",
    [
        ("A dog to the LEFT of a man.", "a dog to the right of a man"),
        ("the rightmost car, left lane", "the leftmost car right lane"),
        ("a red circle on the right side", "a red circle on the left side"),
        ("a dog on a beach", None),  # no side named: the flipped image fits the caption as written
        ("leftover pizza", None),  # a word that merely starts with a side is not one
    ],
)
def test_mirror_caption_swaps_side_words(caption, mirrored):
    from imtext.text.mirror import mirror_caption

    assert mirror_caption(caption) == mirrored


@pytest.mark.parametrize(
    "caption, upside_down",
    [
        ("a red circle sits beneath a blue square", "a red circle sits above a blue square"),
        ("near the top left there is a cross", "near the bottom left there is a cross"),
        ("a cross over a circle", "a cross under a circle"),
        ("a red circle left of a blue square", None),  # sides stay where they are
    ],
)
def test_mirror_caption_top_bottom_swaps_up_down_words(caption, upside_down):
    from imtext.text.mirror import mirror_caption

    assert mirror_caption(caption, "v") == upside_down


def test_training_flips_mirror_the_caption_with_the_image(vocab):
    """PairDataset(hflip=1): every image comes flipped; a caption that names a side comes with its side
    words swapped (so the pair stays true), any other caption as it was; an item whose sentence vector was
    computed for the caption as written stays unflipped; hflip=0 (smallcnn's default) changes nothing."""
    import numpy as np
    import torch

    from imtext.image import train_flip_probability
    from imtext.train.batches import PairDataset, SplitView

    captions = ["a red circle left of a blue square", "a green triangle"]
    view = SplitView(["a", "b"], ["a.png", "b.png"], captions, np.array([0, 1]))
    pixels = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    featurizer = TextFeaturizer("gru", vocab)

    def dataset(hflip, sentences=None):
        ds = PairDataset(view, featurizer, transform=lambda path: None, hflip=hflip, sentences=sentences)
        ds.image = lambda i: pixels[i]  # no files: the pixels of image i
        return ds

    flipped = dataset(1.0)
    image, ids, index, _, _ = flipped[0]
    assert torch.equal(image, pixels[0].flip(-1)) and index == 0
    assert ids == featurizer("a red circle right of a blue square") != featurizer(captions[0])
    image, ids, _, _, _ = flipped[1]
    assert torch.equal(image, pixels[1].flip(-1)) and ids == featurizer(captions[1])
    kept = dataset(1.0, sentences=torch.zeros(2, 4))
    image, ids, _, _, _ = kept[0]
    assert torch.equal(image, pixels[0]) and ids == featurizer(captions[0])
    assert torch.equal(kept[1][0], pixels[1].flip(-1))  # no side named: flipping is still safe
    plain = dataset(0.0)
    assert all(torch.equal(plain[i][0], pixels[i]) and plain[i][1] == featurizer(captions[i]) for i in (0, 1))
    assert train_flip_probability("smallcnn") == 0.0 and train_flip_probability("resnet50") == 0.5
    assert (
        train_flip_probability("smallcnn", "mirror") == 0.5 and train_flip_probability("resnet50", "off") == 0
    )
