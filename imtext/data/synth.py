"""The synthetic world: coloured shapes on a dark background, each image with 5 true captions.

It is the project's embedded default data set (no download) and its main quality test, because everything
about it is known: which words a caption may use, what is in every image, and one split, `order`, that a bag
of words cannot solve by construction.

- Objects: 6 colours (red, green, blue, yellow, purple, white) x 4 shapes (circle, square, triangle, cross)
  x 2 sizes (small, large). Every object is drawn with a small random shade, size and position jitter.
- Scenes (splits train/val/test): 1 to 3 entities, never overlapping; an entity is one object or a group
  of 2 or 3 identical-looking objects ("two red circles"). Captions mix whole-scene descriptions, spatial
  relations (left of, right of, above, below, with paraphrases), positions (on the left, at the top, in the
  top left corner, in the middle), counts, and single-object mentions; size words (small/little,
  large/big) appear in about half of the mentions. Every caption is true of its image.
- `order` split: `order_pairs` pairs of images (order_NNNN_a.png, order_NNNN_b.png). Both images hold the
  same two objects (colours, shades, shapes, sizes); b is a's layout mirrored left-right (or top-bottom),
  so the objects trade places. Their captions use only "left of"/"to the left of" (or "above"/"over") in
  the same five frames with the two objects swapped, so caption k of a and caption k of b hold the same
  multiset of words: only word order tells them apart.

Files: DIR/images/*.png, DIR/captions.jsonl (image, caption_id, caption, split), DIR/scenes.jsonl (what is
drawn where, for analysis and tests), DIR/synth.json (seed, sizes, counts, version). Each image's content
comes from its own random stream seeded by (seed, image index), so the same seed gives byte-identical files
and image k is the same picture whatever n_images is (only the split boundaries move).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import zip_longest
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from rich.console import Console
from rich.progress import track

from imtext.atomic import atomic_dir
from imtext.data.pairs import RawPairs
from imtext.errors import DataError

KIND = "imtext-synth"
VERSION = 1

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (50, 190, 70),
    "blue": (55, 95, 235),
    "yellow": (235, 215, 50),
    "purple": (160, 70, 210),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
SIZES = ("small", "large")
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
NUMBERS = {1: "one", 2: "two", 3: "three"}
KEYS = [(c, sh) for c in COLORS for sh in SHAPES]  # every (colour, shape) an object can have

# Geometry in pixels of a 64 px image; scaled by image_size / 64.
HALF = {"small": (5.0, 7.0), "large": (10.0, 12.5)}  # half the object's width
GAP = 2.0  # least free space between two objects' boxes
REL_MARGIN = 6.0  # least centre offset for "left of" / "above"
SHADE_JITTER = 18  # +- per RGB channel
SUPERSAMPLE = 4  # draw 4x larger, then box-filter down: smooth edges

REL_WORDS = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
REL_FRAMES = (
    "a {x} {rel} a {y}",
    "a {x} is {rel} a {y}",
    "the {x} is {rel} the {y}",
    "the {x} {rel} the {y}",
    "there is a {x} {rel} a {y}",
    "a {x} placed {rel} a {y}",
    "a {x} sits {rel} a {y}",
)
# The order split never uses right/below, so a pair's captions share one relation vocabulary.
ORDER_REL = {"h": REL_WORDS["left"][:2], "v": REL_WORDS["above"]}
SPLIT_FRACTIONS = (0.8, 0.1)  # train, val; test gets the rest
SCENE_KINDS = {  # entity counts -> weight
    (1,): 2,
    (1, 1): 3,
    (1, 1, 1): 2,
    (2,): 1,
    (2, 1): 1,
    (3,): 1,
}


@dataclass(frozen=True)
class Obj:
    """One drawn shape; cx, cy, half in pixels of the output image."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    half: float
    rgb: tuple[int, int, int]

    @property
    def key(self) -> tuple[str, str]:
        return (self.color, self.shape)


@dataclass
class Scene:
    objects: list[Obj]
    background: tuple[int, int, int]


# ---------------------------------------------------------------- sampling scenes


def _shade(rng: random.Random, color: str) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-SHADE_JITTER, SHADE_JITTER))) for c in COLORS[color])


def _background(rng: random.Random) -> tuple[int, int, int]:
    g = rng.randint(25, 70)
    return tuple(min(255, max(0, g + rng.randint(-4, 4))) for _ in range(3))


def _apart(a: Obj, b: Obj, gap: float) -> bool:
    need = a.half + b.half + gap
    return abs(a.cx - b.cx) >= need or abs(a.cy - b.cy) >= need


def _place(rng: random.Random, size: int, specs: list[tuple[str, str, str]]) -> list[Obj] | None:
    """Random non-overlapping positions for (color, shape, size) specs; None if they did not fit."""
    s = size / 64
    for _ in range(50):
        objs: list[Obj] = []
        for color, shape, sz in specs:
            for _ in range(100):
                half = round(rng.uniform(*HALF[sz]) * s, 2)
                cx = round(rng.uniform(half + s, size - half - s), 2)
                cy = round(rng.uniform(half + s, size - half - s), 2)
                obj = Obj(shape, color, sz, cx, cy, half, _shade(rng, color))
                if all(_apart(obj, o, GAP * s) for o in objs):
                    objs.append(obj)
                    break
            else:
                break
        if len(objs) == len(specs):
            return objs
    return None


def sample_scene(rng: random.Random, size: int) -> Scene:
    """A random scene: 1-3 entities with distinct (colour, shape); groups share colour, shape and size."""
    while True:
        counts = rng.choices(list(SCENE_KINDS), weights=list(SCENE_KINDS.values()))[0]
        chosen = rng.sample(KEYS, len(counts))
        specs = []
        for (color, shape), k in zip(chosen, counts):
            sz = rng.choice(SIZES)
            specs += [(color, shape, sz)] * k
        objs = _place(rng, size, specs)
        if objs is not None:
            return Scene(objs, _background(rng))


# ---------------------------------------------------------------- geometry words


def relations(a: Obj, b: Obj, size: int) -> list[str]:
    """How `a` lies relative to `b`: subset of left/right/above/below. An axis counts when the centres
    differ by a clear margin along it and that offset is not dwarfed by the other axis."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    m = REL_MARGIN * size / 64
    out = []
    if abs(dx) >= m and abs(dx) >= 0.6 * abs(dy):
        out.append("left" if dx > 0 else "right")
    if abs(dy) >= m and abs(dy) >= 0.6 * abs(dx):
        out.append("above" if dy > 0 else "below")
    return out


def positions(o: Obj, size: int) -> list[str]:
    """Position phrases true of `o` within the frame (thirds, with a dead zone around the borders)."""
    fx, fy = o.cx / size, o.cy / size
    h = "left" if fx <= 0.35 else "right" if fx >= 0.65 else None
    v = "top" if fy <= 0.35 else "bottom" if fy >= 0.65 else None
    out = []
    if h:
        out += [f"on the {h}", f"on the {h} side"]
    if v:
        out += [f"at the {v}", f"near the {v}"]
    if h and v:
        out += [f"in the {v} {h} corner", f"at the {v} {h}"]
    if 0.4 <= fx <= 0.6 and 0.4 <= fy <= 0.6:
        out += ["in the middle", "in the centre"]
    return out


# ---------------------------------------------------------------- captions


def _fix_articles(text: str) -> str:
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _noun(rng: random.Random, o: Obj, plural: bool = False) -> str:
    """'red circle' or 'big red circle' (size words in about half of the mentions)."""
    shape = PLURALS[o.shape] if plural else o.shape
    if rng.random() < 0.5:
        return f"{rng.choice(SIZE_WORDS[o.size])} {o.color} {shape}"
    return f"{o.color} {shape}"


def _mention(rng: random.Random, group: list[Obj]) -> str:
    """'a red circle' or 'two red circles'."""
    if len(group) == 1:
        return f"a {_noun(rng, group[0])}"
    return f"{NUMBERS[len(group)]} {_noun(rng, group[0], plural=True)}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


class _Captioner:
    """Writes true captions of one scene; each method returns one caption or None if it does not apply."""

    def __init__(self, rng: random.Random, scene: Scene, size: int):
        self.rng, self.size = rng, size
        groups: dict[tuple[str, str], list[Obj]] = {}
        for o in scene.objects:
            groups.setdefault(o.key, []).append(o)
        self.groups = list(groups.values())
        self.unique = [g[0] for g in self.groups if len(g) == 1]
        self.n_objects = len(scene.objects)

    def full(self) -> str:
        groups = self.groups[:]
        self.rng.shuffle(groups)
        listing = _join([_mention(self.rng, g) for g in groups])
        there = "there is" if len(groups[0]) == 1 else "there are"
        frames = (
            "{L}",
            there + " {L}",
            "an image of {L}",
            "a picture with {L}",
            "{L} on a dark background",
            "a dark picture showing {L}",
        )
        return self.rng.choice(frames).format(L=listing)

    def relation(self) -> str | None:
        pairs = [(a, b) for a in self.unique for b in self.unique if a is not b]
        self.rng.shuffle(pairs)
        for a, b in pairs:
            rels = relations(a, b, self.size)
            if rels:
                rel = self.rng.choice(REL_WORDS[self.rng.choice(rels)])
                frame = self.rng.choice(REL_FRAMES)
                return frame.format(x=_noun(self.rng, a), rel=rel, y=_noun(self.rng, b))
        return None

    def position(self) -> str | None:
        groups = self.groups[:]
        self.rng.shuffle(groups)
        for g in groups:
            common = set(positions(g[0], self.size)).intersection(*(positions(o, self.size) for o in g[1:]))
            if not common:
                continue
            pos = self.rng.choice(sorted(common))
            if len(g) == 1:
                frame = self.rng.choice(
                    ("a {x} {pos}", "the {x} is {pos}", "there is a {x} {pos}", "{pos} there is a {x}")
                )
                return frame.format(x=_noun(self.rng, g[0]), pos=pos)
            frame = self.rng.choice(("{n} {xs} {pos}", "there are {n} {xs} {pos}", "the {n} {xs} are {pos}"))
            return frame.format(n=NUMBERS[len(g)], xs=_noun(self.rng, g[0], plural=True), pos=pos)
        return None

    def count(self) -> str:
        if self.rng.random() < 0.25:
            n = self.n_objects
            return self.rng.choice(
                ("a single shape", "only one shape")
                if n == 1
                else (f"{NUMBERS[n]} shapes", f"{NUMBERS[n]} objects", f"there are {NUMBERS[n]} shapes")
            )
        g = self.rng.choice(self.groups)
        if len(g) == 1:
            frame = self.rng.choice(("one {x}", "a single {x}", "only one {x}", "exactly one {x}"))
            return frame.format(x=_noun(self.rng, g[0]))
        frames = ["{n} {xs}", "there are {n} {xs}", "exactly {n} {xs}"] + (
            ["a pair of {xs}"] if len(g) == 2 else []
        )
        return self.rng.choice(frames).format(n=NUMBERS[len(g)], xs=_noun(self.rng, g[0], plural=True))

    def single(self) -> str:
        o = self.rng.choice(self.groups)[0]
        frame = self.rng.choice(
            ("a {x}", "there is a {x}", "a {x} on a dark background", "a picture of a {x}")
        )
        return frame.format(x=_noun(self.rng, o))

    def captions(self, k: int = 5) -> list[str]:
        """k distinct captions: always one whole-scene description and, with 2+ distinct objects, one
        relation; the rest drawn by weight from all kinds."""
        kinds: list[tuple[Callable[[], str | None], int]] = [
            (self.full, 3),
            (self.relation, 3),
            (self.position, 2),
            (self.count, 2),
            (self.single, 1),
        ]
        out: list[str] = []

        def add(c: str | None) -> None:
            if c is not None and _fix_articles(c) not in out and len(out) < k:
                out.append(_fix_articles(c))

        add(self.full())
        add(self.relation())
        for _ in range(500):
            if len(out) == k:
                break
            gen = self.rng.choices([f for f, _ in kinds], weights=[w for _, w in kinds])[0]
            add(gen())
        if len(out) < k:  # cannot happen with this vocabulary; fail loudly rather than write fewer
            raise RuntimeError(f"synth: only {len(out)} distinct captions for a scene")
        self.rng.shuffle(out)
        return out


DRAW_KINDS = ("world", "relation", "position")  # what draw_captioned can draw


def draw_captioned(rng: random.Random, size: int, kind: str = "world") -> tuple[Scene, str]:
    """A new scene and one true caption of it, for training on scenes drawn afresh (imtext.train.fresh).

    kind="world": a scene as the world draws them, with one of the five captions the world would write.
    kind="relation": a two-object scene with a caption relating them ("a red circle left of a blue square"),
    the kind of caption a model learns last (docs/BENCHMARKS.md, "Fresh scenes").
    kind="position": a scene as the world draws them, captioned with where one of its objects lies in the
    frame ("near the bottom there is a small green cross"), which the world's mix writes too rarely for a
    model to learn top from bottom."""
    if kind == "world":
        scene = sample_scene(rng, size)
        return scene, rng.choice(_Captioner(rng, scene, size).captions(5))
    if kind not in DRAW_KINDS:
        raise ValueError(f"draw_captioned: kind must be one of {', '.join(DRAW_KINDS)}, got {kind!r}")
    while True:
        if kind == "position":
            scene = sample_scene(rng, size)
            caption = _Captioner(rng, scene, size).position()  # None when nothing lies clearly anywhere
        else:
            specs = [(c, sh, rng.choice(SIZES)) for c, sh in rng.sample(KEYS, 2)]
            objects = _place(rng, size, specs)
            if objects is None:
                continue
            scene = Scene(objects, _background(rng))
            # None when neither lies clearly beside or above the other
            caption = _Captioner(rng, scene, size).relation()
        if caption is not None:
            return scene, _fix_articles(caption)


# "one red circle" / "two red circles": frame k of one is frame k of the other, so a count pair's captions
# differ in the number alone
COUNT_FRAMES = {
    "one": ("one {x}", "exactly one {x}", "there is one {x}"),
    "many": ("{n} {xs}", "exactly {n} {xs}", "there are {n} {xs}"),
}


def draw_count_pair(rng: random.Random, size: int) -> tuple[Scene, str, Scene, str]:
    """Two scenes that differ by one object of a kind (1 and 2, or 2 and 3 of it, and maybe one other
    object), each captioned with how many of that kind it holds in the same words ("two yellow crosses",
    "three yellow crosses"); in random order. Side by side in a batch, each is the other's hardest negative:
    the only way to tell them apart is to count (imtext.train.fresh, data.fresh_counts)."""
    while True:
        few = rng.choice((1, 2))
        (color, shape), *other = rng.sample(KEYS, 1 + (rng.random() < 0.5))
        sz = rng.choice(SIZES)
        specs = [(color, shape, sz)] * (few + 1) + [(c, sh, rng.choice(SIZES)) for c, sh in other]
        objects = _place(rng, size, specs)
        if objects is not None:
            break
    background = _background(rng)
    more = Scene(objects, background)
    drop = rng.randrange(few + 1)  # one of the group's objects (placed first)
    fewer = Scene([o for i, o in enumerate(objects) if i != drop], background)
    frame = rng.randrange(len(COUNT_FRAMES["one"]))
    word = rng.choice(SIZE_WORDS[sz]) + " " if rng.random() < 0.5 else ""

    def caption(n: int) -> str:
        if n == 1:
            return _fix_articles(COUNT_FRAMES["one"][frame].format(x=f"{word}{color} {shape}"))
        return COUNT_FRAMES["many"][frame].format(n=NUMBERS[n], xs=f"{word}{color} {PLURALS[shape]}")

    pair = [(fewer, caption(few)), (more, caption(few + 1))]
    rng.shuffle(pair)
    (a, caption_a), (b, caption_b) = pair
    return a, caption_a, b, caption_b


def count_probe(image_size: int, pairs: int = 300) -> tuple[list[Image.Image], list[str]]:
    """`pairs` count pairs (draw_count_pair) drawn from a seed no training stream uses: images and captions,
    pair k at rows 2k and 2k+1. What count_pair_accuracy judges."""
    rng = random.Random("imtext/count-probe")
    images, captions = [], []
    for _ in range(pairs):
        a, caption_a, b, caption_b = draw_count_pair(rng, image_size)
        images += [render(a, image_size), render(b, image_size)]
        captions += [caption_a, caption_b]
    return images, captions


def count_pair_accuracy(img: np.ndarray, txt: np.ndarray) -> float:
    """Does a model count? How often an image of a count pair scores its own caption above its twin's
    (rows 2k and 2k+1 a pair, as count_probe gives them; `img` and `txt` their embeddings). 0.5: numbers not
    read; they are what "two yellow crosses" asks for."""
    twin_txt = txt.reshape(-1, 2, txt.shape[1])[:, ::-1].reshape(txt.shape)
    return float(((img * txt).sum(1) > (img * twin_txt).sum(1)).mean())


# ---------------------------------------------------------------- the order split


def mirror_scene(scene: Scene, size: int, axis: str) -> Scene:
    """The scene mirrored left-right (axis "h") or top-bottom ("v"): every object keeps its look, its place
    is reflected, so the objects trade sides (the `order` split's pairs; imtext.train.fresh's twins)."""

    def mirror(o: Obj) -> Obj:
        if axis == "h":
            return Obj(o.shape, o.color, o.size, round(size - o.cx, 2), o.cy, o.half, o.rgb)
        return Obj(o.shape, o.color, o.size, o.cx, round(size - o.cy, 2), o.half, o.rgb)

    return Scene([mirror(o) for o in scene.objects], scene.background)


def sample_order_pair(rng: random.Random, size: int) -> tuple[Scene, Scene, list[str], list[str]]:
    """Two scenes with the same two objects in mirrored layouts, and 5 captions each whose k-th captions
    hold the same words in a different order (see the module docstring)."""
    axis = rng.choice("hv")
    m = REL_MARGIN * size / 64
    while True:
        (c1, s1), (c2, s2) = rng.sample(KEYS, 2)
        objs = _place(rng, size, [(c1, s1, rng.choice(SIZES)), (c2, s2, rng.choice(SIZES))])
        if objs is None:
            continue
        x, y = objs
        d_main, d_off = (y.cx - x.cx, y.cy - x.cy) if axis == "h" else (y.cy - x.cy, y.cx - x.cx)
        if abs(d_main) < m or abs(d_off) > abs(d_main) / 2:
            continue
        if d_main < 0:  # make x the left (or upper) one
            x, y = y, x
        break
    a = Scene([x, y], _background(rng))
    b = mirror_scene(a, size, axis)
    combos = [(f, r) for f in REL_FRAMES for r in ORDER_REL[axis]]
    caps_a, caps_b = [], []
    for frame, rel in rng.sample(combos, 5):
        nx, ny = _noun(rng, x), _noun(rng, y)  # one rendering per object, shared by both images
        caps_a.append(_fix_articles(frame.format(x=nx, rel=rel, y=ny)))
        caps_b.append(_fix_articles(frame.format(x=ny, rel=rel, y=nx)))
    return a, b, caps_a, caps_b


# ---------------------------------------------------------------- drawing and writing


def render(scene: Scene, size: int) -> Image.Image:
    """Draw at SUPERSAMPLE x resolution and box-filter down, so edges are anti-aliased."""
    k = SUPERSAMPLE
    img = Image.new("RGB", (size * k, size * k), scene.background)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        cx, cy, h = o.cx * k, o.cy * k, o.half * k
        if o.shape == "circle":
            draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=o.rgb)
        elif o.shape == "square":
            draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=o.rgb)
        elif o.shape == "triangle":
            draw.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=o.rgb)
        elif o.shape == "cross":
            t = 0.35 * h
            draw.rectangle((cx - h, cy - t, cx + h, cy + t), fill=o.rgb)
            draw.rectangle((cx - t, cy - h, cx + t, cy + h), fill=o.rgb)
        else:  # pragma: no cover - SHAPES is closed
            raise ValueError(o.shape)
    return img.reduce(k)


def split_counts(n_images: int) -> dict[str, int]:
    n_train = round(n_images * SPLIT_FRACTIONS[0])
    n_val = round(n_images * SPLIT_FRACTIONS[1])
    return {"train": n_train, "val": n_val, "test": n_images - n_train - n_val}


def _check_target(out: Path) -> None:
    """Replace only an empty folder or an earlier synthetic world, never someone's other files."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not _is_world(out):
        raise DataError(
            f"{out} is not empty and not a synthetic world; refusing to replace it (choose another --out)"
        )


def _is_world(root: Path) -> bool:
    try:
        return json.loads((root / "synth.json").read_text(encoding="utf-8")).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def generate(
    out_dir: str | Path, n_images: int = 2000, seed: int = 0, image_size: int = 64, order_pairs: int = 200
) -> Path:
    """Write a synthetic world to `out_dir` (replaced as a whole, atomically) and return its path.

    `n_images` random scenes are split 80/10/10 into train/val/test; the `order` split adds
    2 * `order_pairs` images. Same arguments -> byte-identical files.
    """
    if n_images < 0 or order_pairs < 0 or n_images + order_pairs == 0:
        raise DataError("synth: need n_images >= 0, order_pairs >= 0 and at least one image")
    if image_size < 32:
        raise DataError(f"synth: image_size must be at least 32 (got {image_size})")
    out = Path(out_dir).expanduser()
    _check_target(out)
    counts = split_counts(n_images)
    jobs: list[tuple[str, int]] = [("scene", i) for i in range(n_images)] + [
        ("order", p) for p in range(order_pairs)
    ]
    splits = [s for s, n in counts.items() for _ in range(n)]
    cap_lines: list[str] = []
    scene_lines: list[str] = []

    def record(name: str, split: str, scene: Scene, caps: list[str], **extra: object) -> None:
        stem = name.rsplit(".", 1)[0]
        for j, c in enumerate(caps):
            cap_lines.append(
                json.dumps(
                    {"caption": c, "caption_id": f"{stem}#{j}", "image": name, "split": split}, sort_keys=True
                )
            )
        objs = [asdict(o) for o in scene.objects]
        scene_lines.append(
            json.dumps(
                {"background": scene.background, "image": name, "objects": objs, "split": split, **extra},
                sort_keys=True,
            )
        )

    console = Console(stderr=True)
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        for kind, i in track(
            jobs, description="drawing", console=console, transient=True, disable=len(jobs) < 5000
        ):
            rng = random.Random(f"{KIND}/{seed}/{kind}/{i}")  # str seeds hash with sha512: stable everywhere
            if kind == "scene":
                scene = sample_scene(rng, image_size)
                name = f"img_{i:05d}.png"
                render(scene, image_size).save(tmp / "images" / name, format="PNG")
                record(name, splits[i], scene, _Captioner(rng, scene, image_size).captions())
            else:
                a, b, caps_a, caps_b = sample_order_pair(rng, image_size)
                for tag, scene, caps in (("a", a, caps_a), ("b", b, caps_b)):
                    name = f"order_{i:04d}_{tag}.png"
                    render(scene, image_size).save(tmp / "images" / name, format="PNG")
                    record(name, "order", scene, caps, pair=i)
        (tmp / "captions.jsonl").write_text("\n".join(cap_lines) + "\n", encoding="utf-8")
        (tmp / "scenes.jsonl").write_text("\n".join(scene_lines) + "\n", encoding="utf-8")
        counts["order"] = 2 * order_pairs
        meta = {
            "kind": KIND,
            "version": VERSION,
            "seed": seed,
            "image_size": image_size,
            "n_images": n_images,
            "order_pairs": order_pairs,
            "images": counts,
            "captions_per_image": 5,
            "colors": list(COLORS),
            "shapes": list(SHAPES),
            "sizes": list(SIZES),
        }
        (tmp / "synth.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


# ---------------------------------------------------------------- reading


def _require_world(root: Path, source: str) -> None:
    if not _is_world(root):
        what = "does not exist" if not root.exists() else "is not a synthetic world (no valid synth.json)"
        raise DataError(f"{source}: {root} {what}; create it with `imtext data synth --out {root}`")


def read(root: Path, source: str) -> RawPairs:
    """The world's captions as RawPairs (image_id = file stem, e.g. img_00012 or order_0003_b)."""
    _require_world(root, source)
    path = root / "captions.jsonl"
    if not path.is_file():
        raise DataError(f"{source}: {path} is missing; regenerate with `imtext data synth --out {root}`")
    raw = RawPairs(source=source)
    images = root / "images"
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            raw.add(
                r["image"].rsplit(".", 1)[0],
                str(images / r["image"]),
                r["caption_id"],
                r["caption"],
                r["split"],
            )
    return raw


def order_pair_accuracy(image_ids: list[str], caption_image, img, txt) -> float:
    """How often an `order` caption scores its own image above the mirrored one (order_NNNN_a vs _b).

    The one number that says whether a model reads word order: a pair's images hold the same objects and
    caption k of each holds the same words, so any bag of words scores exactly 0.5 here (a caption and its
    partner embed alike, and each pick of one image is right for one of the two). The `order` split's rsum
    can differ between text models for other reasons (retrieving the pair among all others).
    `img` (n_images, D) and `txt` (n_captions, D) are the split's embeddings, rows as in `image_ids` and
    `caption_image` (imtext.evaluate.embed_split's output)."""
    flags = _order_pair_flags(image_ids, caption_image, img, txt)
    return sum(flags.values()) / len(flags)


def order_pair_accuracy_by_axis(image_ids: list[str], caption_image, img, txt, captions: list[str]) -> dict:
    """order_pair_accuracy for the left-right pairs and the up-down pairs apart ({"left-right": ...,
    "up-down": ...}; `captions` the split's caption texts, rows as in `caption_image`). A model can read
    one axis and not the other: the demo's model of session 10 scored 0.97 and 0.50, 0.72 together."""
    flags = _order_pair_flags(image_ids, caption_image, img, txt)
    out = {}
    for axis, words in (("left-right", ORDER_REL["h"]), ("up-down", ORDER_REL["v"])):
        mine = [right for c, right in flags.items() if any(f" {w} " in captions[c] for w in words)]
        if mine:
            out[axis] = sum(mine) / len(mine)
    return out


def _order_pair_flags(image_ids: list[str], caption_image, img, txt) -> dict[int, bool]:
    """caption row -> whether it scores its own image above its pair's mirror (order split captions only)."""
    row = {iid: n for n, iid in enumerate(image_ids)}
    flags = {}
    for c, n in enumerate(caption_image):
        iid = image_ids[int(n)]
        if not iid.startswith("order_") or iid[-2:] not in ("_a", "_b"):
            continue
        partner = row.get(iid[:-1] + ("b" if iid.endswith("a") else "a"))
        if partner is None:
            continue
        flags[c] = float(txt[c] @ img[int(n)]) > float(txt[c] @ img[partner])
    if not flags:
        raise DataError("no order pairs (order_NNNN_a / _b images) among these images")
    return flags


# Every (colour, shape), and its sentence "a COLOUR SHAPE": what `one_object_accuracy` ranks for each
# one-object scene.
ONE_OBJECT_KINDS: tuple[tuple[str, str], ...] = tuple(KEYS)
ONE_OBJECT_SENTENCES: tuple[str, ...] = tuple(f"a {c} {sh}" for c, sh in ONE_OBJECT_KINDS)


def one_object_accuracy(objects: list[Obj], img, sentences) -> dict[str, float]:
    """Does a model see colour and shape? For each one-object scene (its object in `objects`, its image
    embedding a row of `img`), the best of the 24 sentences "a COLOUR SHAPE" (`sentences`: their embeddings,
    rows as in ONE_OBJECT_SENTENCES) is right about the colour, about the shape, about the shape of a small
    object. A model that knows colours alone scores 1.0 / 0.25 (chance) / 0.25; the test rsum cannot tell
    the two apart, a search for "a green triangle" among thousands of images can."""
    if not len(objects):
        raise DataError("no one-object scenes to judge")
    best = [ONE_OBJECT_KINDS[int(j)] for j in (img @ sentences.T).argmax(axis=1)]
    colour = [c == o.color for (c, _), o in zip(best, objects)]
    shape = [sh == o.shape for (_, sh), o in zip(best, objects)]
    small = [ok for ok, o in zip(shape, objects) if o.size == "small"]
    return {"colour": _mean(colour), "shape": _mean(shape), "small": _mean(small), "scenes": len(objects)}


def _mean(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def read_scenes(root: str | Path) -> list[dict]:
    """What is drawn in each image (objects with shape, color, size, cx, cy, half, rgb; `pair` for order)."""
    root = Path(root).expanduser()
    _require_world(root, f"synth:{root}")
    return [
        json.loads(line) for line in (root / "scenes.jsonl").read_text(encoding="utf-8").splitlines() if line
    ]


# ---------------------------------------------------------------- reading a sentence back: what it requires
#
# A caption of this world (or a query typed in its words) names objects, and may add sizes, counts,
# positions in the frame, one relation between two objects and the number of shapes in all. `parse_query`
# turns it into a `SceneQuery`; `SceneQuery.unmet(scene, size)` says what a scene lacks, judged by the
# same geometry that wrote the captions (`positions`, `relations`). That is how a retrieval is scored exactly:
# an image matches a query when its scene has everything the query says (sizes only when asked).

_SHAPE_OF = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}
_SIZE_OF = {w: size for size, words in SIZE_WORDS.items() for w in words}
_NUMBER_OF = {word: n for n, word in NUMBERS.items()}
_REL_OF = {"above": "above", "over": "above", "below": "below", "under": "below", "beneath": "below"}
_TOTAL_NOUNS = ("shape", "shapes", "object", "objects")
# position phrases, longest first, each as (tokens, the canonical phrase `positions` writes); a slot in
# braces takes one of the listed words
_POSITION_PATTERNS: list[tuple[tuple[str, ...], str]] = [
    (("in", "the", "{v}", "{h}", "corner"), "in the {v} {h} corner"),
    (("at", "the", "{v}", "{h}"), "in the {v} {h} corner"),
    (("on", "the", "{h}", "side"), "on the {h}"),
    (("on", "the", "{h}"), "on the {h}"),
    (("at", "the", "{v}"), "at the {v}"),
    (("near", "the", "{v}"), "at the {v}"),
    (("in", "the", "{m}"), "in the middle"),
]
_SLOTS = {"{v}": ("top", "bottom"), "{h}": ("left", "right"), "{m}": ("middle", "centre", "center")}


@dataclass(frozen=True)
class Mention:
    """One object (or group of identical objects) a sentence names: 'two big red circles on the left'."""

    color: str
    shape: str
    size: str | None = None  # "small" / "large" when the sentence says
    at_least: int = 1  # "a red circle": one or more; "two red circles": exactly two
    at_most: int | None = None
    position: str | None = None  # the canonical phrase of `positions`, e.g. "on the left"

    def describe(self) -> str:
        n = f"{self.at_least}" if self.at_most == self.at_least else f"{self.at_least}+"
        size = f"{self.size} " if self.size else ""
        return f"{n} {size}{self.color} {self.shape}" + (f" {self.position}" if self.position else "")


@dataclass(frozen=True)
class SceneQuery:
    """What a sentence requires of a scene (see `parse_query`)."""

    text: str
    mentions: tuple[Mention, ...]
    relation: tuple[int, str, int] | None = None  # mention i lies left/right/above/below of mention j
    total: int | None = None  # "three shapes": the scene holds exactly this many objects
    position: str | None = None  # a position that names no object ("something on the left"): any object

    def unmet(self, scene: Scene, image_size: int, sizes: bool = False) -> list[str]:
        """What the scene lacks, one short reason each; empty when the scene matches. Colours, shapes,
        counts, positions and the relation are always checked; sizes only with `sizes=True`."""
        objs = scene.objects

        def found(m: Mention) -> list[Obj]:
            return [
                o
                for o in objs
                if o.color == m.color and o.shape == m.shape and (not sizes or not m.size or o.size == m.size)
            ]

        out = []
        for m in self.mentions:
            have = found(m)
            if len(have) < m.at_least or (m.at_most is not None and len(have) > m.at_most):
                out.append(f"{m.describe()}: {len(have)} in the scene")
            elif m.position:
                at = [m.position in positions(o, image_size) for o in have]
                if not (all(at) if m.at_least > 1 else any(at)):
                    out.append(f"{m.describe()}: not {m.position}")
        if self.relation is not None:
            i, rel, j = self.relation
            if not any(
                rel in relations(a, b, image_size)
                for a in found(self.mentions[i])
                for b in found(self.mentions[j])
                if a is not b
            ):
                out.append(
                    f"{self.mentions[i].color} {self.mentions[i].shape} not {rel} "
                    f"{self.mentions[j].color} {self.mentions[j].shape}"
                )
        if self.total is not None and len(objs) != self.total:
            out.append(f"{len(objs)} objects, not {self.total}")
        if self.position and not any(self.position in positions(o, image_size) for o in objs):
            out.append(f"nothing {self.position}")
        return out

    def matches(self, scene: Scene, image_size: int, sizes: bool = False) -> bool:
        return not self.unmet(scene, image_size, sizes)

    def colours_match(self, scene: Scene) -> bool:
        """A weaker test than `matches`: the scene holds every colour the sentence names (whatever the
        shapes). A model that has learned colour alone passes this and not `matches`."""
        return {m.color for m in self.mentions} <= {o.color for o in scene.objects}


def _match_position(tokens: list[str], i: int) -> tuple[int, str] | None:
    """(length, canonical phrase) of the position phrase starting at tokens[i], if one does."""
    for pattern, canonical in _POSITION_PATTERNS:
        if i + len(pattern) > len(tokens):
            continue
        filled: dict[str, str] = {}
        for want, got in zip(pattern, tokens[i : i + len(pattern)]):
            if want in _SLOTS:
                if got not in _SLOTS[want]:
                    break
                filled[want] = "middle" if want == "{m}" else got
            elif want != got:
                break
        else:
            phrase = canonical
            for slot, word in filled.items():
                phrase = phrase.replace(slot, word)
            return len(pattern), phrase
    return None


def parse_query(text: str) -> SceneQuery:
    """Read a sentence in the world's words into what it requires of a scene: the objects it names (colour,
    shape, and size, count and position where it says), a relation between two of them, the number of shapes.
    Raises DataError when it names nothing this world can check."""
    tokens = re.findall(r"[a-z]+", text.lower())
    n = len(tokens)
    used = [False] * n
    relations_at: list[tuple[int, str]] = []
    for i, w in enumerate(tokens):
        if w in ("left", "right") and i + 1 < n and tokens[i + 1] == "of":
            start = i - 2 if i >= 2 and tokens[i - 2] in ("to", "on") and tokens[i - 1] == "the" else i
            relations_at.append((i, w))
            for k in range(start, i + 2):
                used[k] = True
        elif w in _REL_OF:
            relations_at.append((i, _REL_OF[w]))
            used[i] = True
    positions_at: list[tuple[int, str]] = []
    i = 0
    while i < n:
        hit = None if used[i] else _match_position(tokens, i)
        if hit and not any(used[i : i + hit[0]]):
            positions_at.append((i, hit[1]))
            i += hit[0]
        else:
            i += 1
    mentions: list[tuple[int, dict]] = []
    total = None
    for i, w in enumerate(tokens):
        if w in COLORS and i + 1 < n and tokens[i + 1] in _SHAPE_OF:
            m: dict = {"color": w, "shape": _SHAPE_OF[tokens[i + 1]]}
            plural = tokens[i + 1] != m["shape"]
            j = i - 1
            if j >= 0 and tokens[j] in _SIZE_OF:
                m["size"] = _SIZE_OF[tokens[j]]
                j -= 1
            count = None
            if j >= 0 and tokens[j] in _NUMBER_OF:
                count = _NUMBER_OF[tokens[j]]
            elif j >= 0 and tokens[j] == "single":
                count = 1
            elif j >= 1 and tokens[j - 1 : j + 1] == ["pair", "of"]:
                count = 2
            if count is not None:
                m["at_least"] = m["at_most"] = count
            elif plural:
                m["at_least"] = 2
            mentions.append((i, m))
        elif w in _TOTAL_NOUNS and i > 0 and (tokens[i - 1] in _NUMBER_OF or tokens[i - 1] == "single"):
            total = _NUMBER_OF.get(tokens[i - 1], 1)
    free_position = None
    for p, phrase in positions_at:
        before = [m for at, m in mentions if at < p]
        after = [m for at, m in mentions if at > p]
        owner = before[-1] if before else after[0] if after else None
        if owner is None:
            free_position = phrase
        else:
            owner["position"] = phrase
    relation = None
    for r, rel in relations_at:
        before = [k for k, (at, _) in enumerate(mentions) if at < r]
        after = [k for k, (at, _) in enumerate(mentions) if at > r]
        if before and after:
            relation = (before[-1], rel, after[0])
    if not mentions and total is None and free_position is None:
        raise DataError(
            f"{text!r} names no object of the synthetic world (a colour and a shape, e.g. 'a red circle') "
            "and no number of shapes"
        )
    return SceneQuery(text, tuple(Mention(**m) for _, m in mentions), relation, total, free_position)


def scene_from_record(record: dict) -> Scene:
    """A Scene from one line of scenes.jsonl (what `read_scenes` returns)."""
    objects = [Obj(**{**o, "rgb": tuple(o["rgb"])}) for o in record["objects"]]
    return Scene(objects, tuple(record["background"]))


@dataclass(frozen=True)
class Precision:
    """Precision@k of one query: `hits` of the top `k` images match; `relevant` images in the collection do."""

    query: str
    hits: int
    k: int
    relevant: int
    unmet: tuple[tuple[str, ...], ...] = ()  # per ranked image: what it lacks (empty when it matches)
    colour_hits: int = 0  # of the top k, images holding the sentence's colours (shapes aside)

    @property
    def value(self) -> float:
        return self.hits / self.k if self.k else 0.0

    @property
    def ceiling(self) -> int:
        """The most hits any ranking could have: fewer than k when fewer images match at all."""
        return min(self.k, self.relevant)

    @property
    def most(self) -> bool:
        """Most of the top k match (3 of 5), or every matching image is there when fewer exist."""
        return self.hits >= min(self.k // 2 + 1, self.relevant)


class SceneIndex:
    """Every scene of a world by image_id (the file stem), to judge retrieved images against a query."""

    def __init__(self, scenes: dict[str, Scene], image_size: int):
        self.scenes, self.image_size = scenes, image_size

    @classmethod
    def load(cls, root: str | Path) -> SceneIndex:
        root = Path(root).expanduser()
        records = read_scenes(root)
        meta = json.loads((root / "synth.json").read_text(encoding="utf-8"))
        scenes = {r["image"].rsplit(".", 1)[0]: scene_from_record(r) for r in records}
        return cls(scenes, int(meta["image_size"]))

    def unmet(self, query: SceneQuery | str, image_id: str, sizes: bool = False) -> list[str]:
        q = parse_query(query) if isinstance(query, str) else query
        if image_id not in self.scenes:
            raise DataError(f"{image_id!r} is not an image of this synthetic world")
        return q.unmet(self.scenes[image_id], self.image_size, sizes)

    def relevant(
        self, query: SceneQuery | str, among: list[str] | None = None, sizes: bool = False
    ) -> list[str]:
        """The image_ids (of `among`, default all) whose scenes match the query."""
        q = parse_query(query) if isinstance(query, str) else query
        ids = self.scenes if among is None else among
        return [i for i in ids if not self.unmet(q, i, sizes)]

    def precision_at_k(
        self,
        query: str,
        ranked: list[str],
        k: int = 5,
        among: list[str] | None = None,
        sizes: bool = False,
    ) -> Precision:
        """Precision@k of a ranking (image_ids, best first) for `query`; `among` is the searched collection
        (default every scene), which bounds how many hits are possible."""
        q = parse_query(query)
        top = ranked[:k]
        unmet = tuple(tuple(self.unmet(q, i, sizes)) for i in top)
        hits = sum(not u for u in unmet)
        colours = sum(q.colours_match(self.scenes[i]) for i in top)
        return Precision(query, hits, k, len(self.relevant(q, among, sizes)), unmet, colours)


# ---- example queries for a search page ---------------------------------------------------------------------

# What the page's examples show, in turn: one object; an object at a place; a count; two objects in relation.
QUERY_KINDS = ("object", "position", "count", "relation")
MIN_ANSWERS = 5  # an example query has at least this many matching images: a top 5 can show a search
_TRIES_PER_KIND = 300


def query_kind(q: SceneQuery) -> str | None:
    """The kind of a query in QUERY_KINDS, or None (a whole-scene listing, a bare number of shapes)."""
    if q.relation is not None:
        return "relation"
    if q.total is not None or len(q.mentions) != 1:
        return None
    m = q.mentions[0]
    if m.position or q.position:
        return "position"
    if m.at_most is not None:
        return "count"
    return "object"


def suggest_queries(
    root: str | Path, image_ids: list[str], captions: list[str], n: int = 6, seed: int = 0
) -> list[str]:
    """n of the world's own captions (`captions[i]` describes `image_ids[i]`, the collection's pairs) to
    offer as example searches: the kinds of QUERY_KINDS in turn, each with at least MIN_ANSWERS matching
    images among `image_ids`, picked in a seeded random order. A caption that lists a whole scene singles out
    one image among thousands: a needle, not a search, and no way to show what a model has learned."""
    index = SceneIndex.load(root)
    among = [i for i in dict.fromkeys(image_ids) if i in index.scenes]
    by_kind: dict[str, list[SceneQuery]] = {k: [] for k in QUERY_KINDS}
    for caption in dict.fromkeys(captions):
        try:
            q = parse_query(caption)
        except DataError:
            continue
        kind = query_kind(q)
        if kind is not None:
            by_kind[kind].append(q)
    rng = random.Random(seed)
    wanted = -(-n // len(QUERY_KINDS))  # enough of each kind for n in turn
    picked: dict[str, list[str]] = {k: [] for k in QUERY_KINDS}
    for kind, candidates in by_kind.items():
        rng.shuffle(candidates)
        for q in candidates[:_TRIES_PER_KIND]:
            if len(picked[kind]) == wanted:
                break
            if len(index.relevant(q, among)) >= MIN_ANSWERS:
                picked[kind].append(q.text)
    in_turn = [q for group in zip_longest(*picked.values()) for q in group if q is not None]
    return in_turn[:n]
