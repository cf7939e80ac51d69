"""Data sources -> one pairs table (image_id, image_path, caption_id, caption, split).

`load_pairs("KIND:PATH")` reads Flickr8k, Karpathy split files (Flickr8k/30k, COCO), official COCO captions,
your own CSV/Parquet manifest, or the synthetic world made by `imtext.data.synth.generate`.
"""

from imtext.data.images import load_image
from imtext.data.load import KINDS, image_roots, load_pairs, parse_spec, suggested_queries
from imtext.data.pairs import PAIRS_SCHEMA, split_names

__all__ = [
    "KINDS",
    "PAIRS_SCHEMA",
    "image_roots",
    "load_image",
    "load_pairs",
    "parse_spec",
    "split_names",
    "suggested_queries",
]
