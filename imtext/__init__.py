"""imtext: bidirectional image-sentence retrieval trained, tuned and served on Ray."""

__version__ = "0.1.0"
