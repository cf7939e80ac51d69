"""The text branch: tokenizer, vocabulary, featurizers for the paper's text models, and their encoders."""

from imtext.text.encoder import BagEncoder, GRUEncoder, build_text_encoder
from imtext.text.featurize import TEXT_KINDS, WEIGHTINGS, TextFeaturizer, collate_texts, ngram_bucket
from imtext.text.tokenize import tokenize
from imtext.text.vocab import PAD, PAD_ID, UNK, UNK_ID, Vocab

__all__ = [
    "PAD",
    "PAD_ID",
    "TEXT_KINDS",
    "UNK",
    "UNK_ID",
    "WEIGHTINGS",
    "BagEncoder",
    "GRUEncoder",
    "TextFeaturizer",
    "Vocab",
    "build_text_encoder",
    "collate_texts",
    "ngram_bucket",
    "tokenize",
]
