"""Embed one split with a model and score it with the retrieval metrics (R@K, median/mean rank, rsum)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from imtext.metrics import retrieval
from imtext.model import TwoBranch
from imtext.train.batches import FeatureLookup, PairDataset, SplitView


@torch.inference_mode()
def embed_split(
    model: TwoBranch,
    view: SplitView,
    features: FeatureLookup | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """(image embeddings in view.image_ids order, caption embeddings in view.captions order)."""
    was_training = model.training
    model.eval()
    transform = None if features is not None else model.image_preprocess(train=False)
    dataset = PairDataset(view, model.featurizer, transform=transform, features=features)
    img_chunks = []
    for start in range(0, len(view.image_ids), batch_size):
        batch = torch.stack(
            [dataset.image(i) for i in range(start, min(start + batch_size, len(view.image_ids)))]
        )
        img_chunks.append(model.encode_images(batch.to(device)).float().cpu())
    txt_chunks = []
    loader = DataLoader(range(len(dataset)), batch_size=batch_size, collate_fn=list)
    for rows in loader:
        batch = model.texts_to(model.tokenize([view.captions[r] for r in rows]), device)
        txt_chunks.append(model.encode_texts(batch).float().cpu())
    model.train(was_training)  # validation must not leave the model in eval mode for the next epoch
    return torch.cat(img_chunks).numpy(), torch.cat(txt_chunks).numpy()


def evaluate(
    model: TwoBranch,
    view: SplitView,
    features: FeatureLookup | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    img, txt = embed_split(model, view, features, batch_size, device)
    return retrieval(img, txt, view.caption_image)
