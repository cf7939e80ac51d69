"""From a pairs table to training batches: one item per caption, with its image as pixels or as precomputed
backbone features. Workers read their own images (a DistributedSampler shards the captions), so training
needs no data service: the pairs table is small, the images are read where they are used."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from imtext.data import load_image
from imtext.errors import DataError
from imtext.text import UNK_ID, TextFeaturizer, collate_texts
from imtext.text.mirror import mirror_caption
from imtext.text.swap import WordSwap


@dataclass
class SplitView:
    """The captions of one split and the unique images they point to (in first-seen order)."""

    image_ids: list[str]
    image_paths: list[str]
    captions: list[str]
    caption_image: np.ndarray  # (n_captions,) index into image_ids

    @classmethod
    def from_table(cls, pairs: pa.Table, split: str, max_pairs: int = 0) -> SplitView:
        rows = pairs.filter(pc.equal(pairs["split"], split))
        if rows.num_rows == 0:
            available = sorted(set(pairs["split"].to_pylist()))
            raise DataError(f"split {split!r} has no pairs; available splits: {', '.join(available)}")
        if max_pairs and rows.num_rows > max_pairs:
            rows = rows.slice(0, max_pairs)
        index: dict[str, int] = {}
        paths: list[str] = []
        caption_image = np.empty(rows.num_rows, dtype=np.int64)
        for n, (iid, path) in enumerate(zip(rows["image_id"].to_pylist(), rows["image_path"].to_pylist())):
            if iid not in index:
                index[iid] = len(index)
                paths.append(path)
            caption_image[n] = index[iid]
        return cls(list(index), paths, rows["caption"].to_pylist(), caption_image)


class FeatureLookup:
    """Precomputed backbone features keyed by image_id (from `imtext features`)."""

    def __init__(self, ids: list[str], matrix: np.ndarray):
        self.row = {iid: n for n, iid in enumerate(ids)}
        self.matrix = torch.from_numpy(np.array(matrix, dtype=np.float32, copy=True))

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __call__(self, image_id: str) -> torch.Tensor:
        try:
            return self.matrix[self.row[image_id]]
        except KeyError:
            raise DataError(
                f"no precomputed features for image {image_id!r}; rerun `imtext features` on this dataset"
            ) from None


class PairDataset(Dataset):
    """Items: (image tensor or feature vector, caption feature ids, image index within the split, the
    caption's sentence vector or None, word swaps or None). The sentence vectors (N, dim) are the split's,
    from the text branch's sentence encoder, computed once by the caller. Word swaps: `swaps` copies of the
    caption with one word swapped (feature ids, or None where it has no word to swap) when a WordSwap is
    given: hard negatives of the image, drawn afresh each time the item is read.

    `hflip`: the probability of flipping an item's image left-right, its caption's side words swapped to
    match (imtext.text.mirror). An item whose caption names a side and has a precomputed sentence vector
    stays unflipped: that vector was computed for the caption as written."""

    def __init__(
        self,
        view: SplitView,
        featurizer: TextFeaturizer,
        transform: Callable | None = None,
        features: FeatureLookup | None = None,
        cache_images: int = 4096,
        swap: WordSwap | None = None,
        swaps: int = 0,
        sentences: torch.Tensor | None = None,
        hflip: float = 0.0,
    ):
        if transform is None and features is None:
            raise ValueError("PairDataset needs an image transform or precomputed features")
        if sentences is not None and len(sentences) != len(view.captions):
            raise ValueError(f"{len(sentences)} sentence vectors for {len(view.captions)} captions")
        self.sentences = sentences
        self.view = view
        self.featurizer = featurizer
        self.transform = transform
        self.features = features
        self.swap, self.swaps = swap, swaps if swap is not None else 0
        self.hflip = hflip if features is None else 0.0  # feature vectors cannot be flipped
        self.text_ids = [featurizer(c) for c in view.captions]
        # Small datasets (the synthetic world, coco-mini) decode each image once.
        self._load = lru_cache(maxsize=cache_images)(load_image)

    def __len__(self) -> int:
        return len(self.view.captions)

    def image(self, image_index: int) -> torch.Tensor:
        if self.features is not None:
            return self.features(self.view.image_ids[image_index])
        return self.transform(self._load(self.view.image_paths[image_index]))

    def __getitem__(self, n: int):
        image_index = int(self.view.caption_image[n])
        sentence = None if self.sentences is None else self.sentences[n]
        image, caption, ids = self.image(image_index), self.view.captions[n], self.text_ids[n]
        if self.hflip and float(torch.rand(())) < self.hflip:
            mirrored = mirror_caption(caption)
            if mirrored is None:
                image = image.flip(-1)
            elif sentence is None:
                image, caption, ids = image.flip(-1), mirrored, self.featurizer(mirrored)
        hard = None
        if self.swaps:
            swapped = [self.swap(caption) for _ in range(self.swaps)]
            hard = [None if c is None else self.featurizer(c) for c in swapped]
        return image, ids, image_index, sentence, hard


def collate_pairs(items) -> dict[str, torch.Tensor]:
    """A batch: images, caption ids and lengths, image_index; with sentence vectors `sentences` (B, dim);
    with swaps also `swap_ids`/`swap_lengths` ((B * swaps) rows, swap-major: row s * B + b is caption b's
    s-th swap) and `swap_valid` (B, swaps)."""
    images, texts, image_index, sentences, hard = zip(*items)
    ids, lengths = collate_texts(list(texts))
    batch = {
        "images": torch.stack(images),
        "ids": ids,
        "lengths": lengths,
        "image_index": torch.tensor(image_index, dtype=torch.long),
    }
    if sentences[0] is not None:
        batch["sentences"] = torch.stack(sentences)
    if hard[0] is not None:  # per item: a list of `swaps` id lists or None
        swaps = len(hard[0])
        rows = [hard[b][s] for s in range(swaps) for b in range(len(hard))]
        batch["swap_ids"], batch["swap_lengths"] = collate_texts([r if r else [UNK_ID] for r in rows])
        batch["swap_valid"] = torch.tensor([[h is not None for h in item] for item in hard], dtype=torch.bool)
    return batch
