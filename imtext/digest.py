"""Hashes of weights: a model's fingerprint and the sentence encoder's digest feed their tensors to a hash
the same way, so two sets of weights hash alike exactly when their names and bytes are equal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def update_with_tensors(h: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    """Feed `tensors` to the hashlib object `h` in name order: each name, then its raw bytes."""
    for name, tensor in sorted(tensors.items()):
        t = tensor.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the same bytes as int16
            t = t.view(torch.int16)
        h.update(name.encode())
        h.update(t.numpy().tobytes())
