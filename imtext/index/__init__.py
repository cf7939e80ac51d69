"""The sharded FAISS index: cosine top-k over L2-normalised vectors, one FAISS index per shard."""

from imtext.index.merge import merge_topk
from imtext.index.sharded import DEFAULT_MAX_SHARD_SIZE, ShardedIndex

__all__ = ["DEFAULT_MAX_SHARD_SIZE", "ShardedIndex", "merge_topk"]
