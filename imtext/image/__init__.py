"""The image branch's CNN part: backbones, their pixel transforms, and precomputed features."""

from imtext.image.backbones import (
    BACKBONES,
    OUT_DIMS,
    Backbone,
    build_backbone,
    image_transform,
    normalization,
    train_flip_probability,
)
from imtext.image.features import compute_features, load_features

__all__ = [
    "BACKBONES",
    "OUT_DIMS",
    "Backbone",
    "build_backbone",
    "compute_features",
    "image_transform",
    "load_features",
    "normalization",
    "train_flip_probability",
]
