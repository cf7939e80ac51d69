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
from pathlib import Path

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
    keys = [(c, sh) for c in COLORS for sh in SHAPES]
    while True:
        counts = rng.choices(list(SCENE_KINDS), weights=list(SCENE_KINDS.values()))[0]
        chosen = rng.sample(keys, len(counts))
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


# ---------------------------------------------------------------- the order split


def sample_order_pair(rng: random.Random, size: int) -> tuple[Scene, Scene, list[str], list[str]]:
    """Two scenes with the same two objects in mirrored layouts, and 5 captions each whose k-th captions
    hold the same words in a different order (see the module docstring)."""
    axis = rng.choice("hv")
    keys = [(c, sh) for c in COLORS for sh in SHAPES]
    m = REL_MARGIN * size / 64
    while True:
        (c1, s1), (c2, s2) = rng.sample(keys, 2)
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
    bg = _background(rng)

    def mirror(o: Obj) -> Obj:
        if axis == "h":
            return Obj(o.shape, o.color, o.size, round(size - o.cx, 2), o.cy, o.half, o.rgb)
        return Obj(o.shape, o.color, o.size, o.cx, round(size - o.cy, 2), o.half, o.rgb)

    a, b = Scene([x, y], bg), Scene([mirror(x), mirror(y)], bg)
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


def read_scenes(root: str | Path) -> list[dict]:
    """What is drawn in each image (objects with shape, color, size, cx, cy, half, rgb; `pair` for order)."""
    root = Path(root).expanduser()
    _require_world(root, f"synth:{root}")
    return [
        json.loads(line) for line in (root / "scenes.jsonl").read_text(encoding="utf-8").splitlines() if line
    ]
