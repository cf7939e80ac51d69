"""Training on a synthetic world's scenes drawn afresh at every step (`data.fresh_scenes`), instead of its
stored training split.

No scene is seen twice, so what the model knows of shapes and relations is learned, not remembered. Trained
on the 1,600 stored training scenes of the demo's world, the demo's model named the shape of 0.40 of the
world's held-out one-object scenes and never read word order. Trained on fresh scenes (at first two-object
scenes captioned with their relation, each caption that names a place beside its mirror) it reads both
(docs/BENCHMARKS.md, "Fresh scenes").

The stored world still gives the vocabulary, the number of samples an epoch holds (its training split's
caption count), the validation split and the collection a page searches. Each (seed, rank, loader worker,
epoch) draws its own stream, seeded apart from the world's own scenes, so a run is reproducible and a
restored run draws what it would have drawn.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from imtext.config import check_shares
from imtext.data import synth
from imtext.data.load import parse_spec
from imtext.errors import ImtextError
from imtext.image import normalization
from imtext.text import TextFeaturizer
from imtext.text.mirror import mirror_caption
from imtext.train.batches import collate_pairs

# A stream's image_index values start at rank * INDEX_STRIDE, so indices never collide across the ranks
# whose batches one loss gathers (the loss treats equal indices as one image).
INDEX_STRIDE = 1 << 40
# data.fresh_twins -> the axes a twin may mirror: (for the world's captions, for the captions drawn to teach
# places: every caption of the relation epochs, and the position captions)
TWIN_AXES = {"sides": ("h", "h"), "places": ("h", "hv"), "all": ("hv", "hv"), "off": ("", "")}


def world_meta(spec: str) -> dict:
    """synth.json of the world behind `spec`; ImtextError if the spec is not a synthetic world."""
    kind, path = parse_spec(spec)
    meta_path = Path(path).expanduser() / "synth.json"
    if kind != "synth" or not meta_path.is_file():
        raise ImtextError(
            f"data.fresh_scenes draws new scenes from a synthetic world's generator; {spec!r} is not one "
            "(use data.spec=synth:DIR, made by `imtext data synth`, or set data.fresh_scenes=false)"
        )
    return json.loads(meta_path.read_text(encoding="utf-8"))


class FreshScenes(IterableDataset):
    """`samples` items per epoch and rank, in PairDataset's item format: (pixels, caption ids, image_index,
    None, None).

    `relations`: the share of two-object scenes captioned with their relation (synth.draw_captioned);
    `positions`: the share of scenes captioned with where one object lies in the frame; the rest are scenes
    and captions as the world draws them. The first `relation_epochs` epochs draw relations alone (and count
    pairs, below): shapes and relations are what a model learns last from the world's mix, and learns first
    from them (docs/BENCHMARKS.md, "Fresh scenes"). `counts`: from epoch `counts_from` on, in the relation
    epochs too, the share of draws that are two scenes one object apart, each captioned with how many of a
    kind it holds (synth.draw_count_pair), side by side: the only signal that teaches counting
    (docs/BENCHMARKS.md, "Counting"). A pair is two of the `samples`.

    `twins`: a caption that names a side or an up-down place may be followed by its mirror, the scene
    drawn mirrored left-right (or top-bottom) and the caption with those words swapped
    (imtext.text.mirror), each the other's hardest negative in the batch. "sides": left-right twins only;
    "places": also top-bottom ones for the captions drawn to teach places (the relation epochs, the
    position captions); "all": both axes for every caption; "off": none. Without a top-bottom twin a model
    never tells "above" from "below" (0.50 on the `order` split's up-down pairs). No top-bottom twin is
    drawn before epoch `updown_from`: twins halve a batch's distinct scenes, and from the first epoch they
    kept a model from learning shapes one run in two (docs/BENCHMARKS.md, "Up and down"). A twin counts
    as one of the `samples`."""

    def __init__(
        self,
        featurizer: TextFeaturizer,
        transform: Callable,
        samples: int,
        image_size: int,
        seed: int,
        rank: int = 0,
        relations: float = 0.5,
        positions: float = 0.0,
        counts: float = 0.0,
        twins: str = "sides",
        relation_epochs: int = 0,
        updown_from: int = 0,
        counts_from: int = 0,
    ):
        if samples < 1:
            raise ImtextError("data.fresh_scenes: an epoch needs at least one sample")
        check_shares(relations, positions, counts)
        self.featurizer, self.transform = featurizer, transform
        self.samples, self.image_size = samples, image_size
        if twins not in TWIN_AXES:
            raise ImtextError(f"data.fresh_twins must be one of {', '.join(TWIN_AXES)}, got {twins!r}")
        self.seed, self.rank, self.twin_axes = seed, rank, TWIN_AXES[twins]
        self.relations, self.positions, self.counts = relations, positions, counts
        self.relation_epochs, self.updown_from = relation_epochs, updown_from
        self.counts_from = counts_from
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Each epoch draws other scenes (as DistributedSampler.set_epoch reshuffles)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        count = len(range(worker, self.samples, workers))  # loader workers share the epoch's samples
        rng = random.Random(f"imtext-fresh/{self.seed}/{self.rank}/{worker}/{self.epoch}")
        index = self.rank * INDEX_STRIDE + worker * (INDEX_STRIDE // workers)
        early = self.epoch < self.relation_epochs
        counts = self.counts if self.epoch >= self.counts_from else 0.0
        relations, positions = (1.0 - counts, 0.0) if early else (self.relations, self.positions)
        made = 0
        while made < count:
            u = rng.random()
            if relations + positions <= u < relations + positions + counts:
                a, caption_a, b, caption_b = synth.draw_count_pair(rng, self.image_size)
                for scene, caption in ((a, caption_a), (b, caption_b))[: count - made]:
                    yield self._item(scene, caption, index)
                    made, index = made + 1, index + 1
                continue
            kind = "relation" if u < relations else "position" if u < relations + positions else "world"
            scene, caption = synth.draw_captioned(rng, self.image_size, kind)
            yield self._item(scene, caption, index)
            made, index = made + 1, index + 1
            drilled = early or kind == "position"  # drawn to teach places
            axes = [axis for axis in self.twin_axes[drilled] if mirror_caption(caption, axis)]
            if self.epoch < self.updown_from:
                axes = [axis for axis in axes if axis != "v"]
            if axes and made < count:
                axis = rng.choice(axes)
                twin = synth.mirror_scene(scene, self.image_size, axis)
                yield self._item(twin, mirror_caption(caption, axis), index)
                made, index = made + 1, index + 1

    def _item(self, scene: synth.Scene, caption: str, index: int) -> tuple:
        return (
            self.transform(synth.render(scene, self.image_size)),
            self.featurizer(caption),
            index,
            None,
            None,
        )


class RawPixels:
    """PIL image -> (size, size, 3) uint8 tensor: the per-item half of smallcnn's transform (the resize, by
    the same PIL call torchvision's Resize makes, so a scene drawn at the world's size reaches the CNN as
    the collection's images do). NormalizedBatch does the other half once per batch: per item, ToTensor
    and Normalize cost five times as much (0.19 ms an image, half of drawing it, an eighth of a demo step).
    A world resized to a smaller CNN blurs its small shapes, and shapes were learned worse from it; draw it
    at the CNN's size instead (docs/BENCHMARKS.md, "Up and down", runs N and Q)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image) -> torch.Tensor:
        rgb = image if image.mode == "RGB" else image.convert("RGB")  # the world draws RGB: no copy
        if rgb.size != (self.size, self.size):
            rgb = rgb.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(rgb, dtype=np.uint8))


class NormalizedBatch:
    """collate_pairs, then (B, H, W, 3) uint8 pixels -> (B, 3, H, W) floats normalised as the backbone
    expects: the same arithmetic as torchvision's ToTensor + Normalize, so the same numbers, in channels-last
    layout."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, items) -> dict[str, torch.Tensor]:
        batch = collate_pairs(items)
        pixels = batch["images"].permute(0, 3, 1, 2).float().div_(255)
        batch["images"] = pixels.sub_(self.mean).div_(self.std)
        return batch


def fresh_dataset(
    cfg, featurizer: TextFeaturizer, transform: Callable, samples: int, rank: int
) -> tuple[FreshScenes, Callable]:
    """The training stream `cfg` asks for (data.fresh_scenes), `samples` items per epoch on this rank, and
    the collate function for its batches."""
    size = int(world_meta(cfg.data.spec)["image_size"])
    raw = cfg.image.backbone == "smallcnn"  # scenes drawn at the world's size, resized as the collection is
    dataset = FreshScenes(
        featurizer,
        RawPixels(cfg.image.size()) if raw else transform,
        samples,
        size,
        seed=cfg.train.seed,
        rank=rank,
        relations=cfg.data.fresh_relations,
        positions=cfg.data.fresh_positions,
        counts=cfg.data.fresh_counts,
        twins=cfg.data.fresh_twins,
        relation_epochs=cfg.data.fresh_relation_epochs,
        updown_from=cfg.data.fresh_updown_from,
        counts_from=cfg.data.fresh_counts_from,
    )
    return dataset, NormalizedBatch(*normalization(cfg.image.backbone)) if raw else collate_pairs
