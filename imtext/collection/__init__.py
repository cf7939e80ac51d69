"""A searchable collection: a model's embeddings of a dataset's images and captions, in two sharded FAISS
indexes (images, captions) plus the metadata that turns an index id back into a photo or a sentence.

- `format`: the on-disk layout and its one reader (`read_meta`), shared by the CLI, the builder and Serve;
- `build`: `build_collection`, `add_to_collection` and `remove_from_collection` (embedding with Ray Data,
  indexing, atomic writes);
- `search`: `Collection`, a built collection opened for searching.
"""

from imtext.collection.build import (
    add_to_collection,
    build_collection,
    load_indexing_model,
    remove_from_collection,
)
from imtext.collection.format import (
    INFO,
    CollectionMeta,
    ModelMismatch,
    TooManyShards,
    read_info,
    read_meta,
)
from imtext.collection.search import Collection

__all__ = [
    "INFO",
    "Collection",
    "CollectionMeta",
    "ModelMismatch",
    "TooManyShards",
    "add_to_collection",
    "build_collection",
    "load_indexing_model",
    "read_info",
    "read_meta",
    "remove_from_collection",
]
