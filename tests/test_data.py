"""The data layer: every source format into the one pairs table, and every kind of bad input answered."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imtext.data import PAIRS_SCHEMA, load_image, load_pairs, parse_spec, split_names
from imtext.errors import DataError, ImtextError

COCO_MINI = Path("/work/shared/data/coco-mini")


def _png(path: Path, color: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path, format=fmt)
    return path


def _rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


# ---------------------------------------------------------------- COCO (real photos)


@pytest.mark.skipif(not COCO_MINI.is_dir(), reason="coco-mini not present")
def test_coco_mini_loads_all_captions_with_exact_schema():
    expected = {}
    for split in ("train", "val"):
        data = json.loads((COCO_MINI / "annotations" / f"captions_{split}2017.json").read_text())
        expected[split] = (len(data["images"]), len(data["annotations"]))
    assert expected == {"train": (80, 400), "val": (79, 395)}

    table = load_pairs(f"coco:{COCO_MINI}")
    assert table.schema.equals(PAIRS_SCHEMA)
    assert split_names(table) == ["train", "val"]
    rows = _rows(table)
    for split, (n_images, n_caps) in expected.items():
        mine = [r for r in rows if r["split"] == split]
        assert len(mine) == n_caps
        per_image = Counter(r["image_id"] for r in mine)
        assert len(per_image) == n_images and set(per_image.values()) == {5}
    paths = {r["image_path"] for r in rows}
    assert len(paths) == 159 and all(os.path.isabs(p) and os.path.isfile(p) for p in paths)
    assert len({r["caption_id"] for r in rows}) == 795
    # ids are COCO's own: image 397133 is the first val image, annotation 221865 belongs to image 205401
    first_val = next(r for r in rows if r["image_id"] == "397133")
    assert first_val["split"] == "val" and first_val["image_path"].endswith("val2017/000000397133.jpg")
    assert next(r for r in rows if r["caption_id"] == "221865")["image_id"] == "205401"
    assert all(r["caption"] == r["caption"].strip() and r["caption"] for r in rows)


@pytest.mark.skipif(not COCO_MINI.is_dir(), reason="coco-mini not present")
def test_coco_split_aliases_unknown_split_and_load_image():
    val = load_pairs(f"coco:{COCO_MINI}", splits=["val2017"])
    assert val.num_rows == 395 and split_names(val) == ["val"]
    with pytest.raises(DataError, match=r"'test'.*available splits: train, val"):
        load_pairs(f"coco:{COCO_MINI}", splits=["test"])
    img = load_image(val.column("image_path")[0].as_py())
    assert img.mode == "RGB" and img.size == (640, 427)  # 397133 per the JSON


def test_coco_missing_annotations_names_expected_file(tmp_path):
    with pytest.raises(DataError, match=r"annotations/captions_train2017\.json"):
        load_pairs(f"coco:{tmp_path}")


def test_coco_2014_layout_and_orphan_caption(tmp_path, capsys):
    _png(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg", fmt="JPEG")
    _png(tmp_path / "val2014" / "COCO_val2014_000000000043.jpg", fmt="JPEG")
    ann = {
        "images": [
            {"id": 42, "file_name": "COCO_val2014_000000000042.jpg"},
            {"id": 43, "file_name": "COCO_val2014_000000000043.jpg"},  # no caption
        ],
        "annotations": [
            {"id": 7, "image_id": 42, "caption": "A dog on a sofa.\n"},
            {"id": 8, "image_id": 42, "caption": "  a   brown dog  "},
            {"id": 9, "image_id": 99, "caption": "refers to no image"},
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2014.json").write_text(json.dumps(ann))
    rows = _rows(load_pairs(f"coco:{tmp_path}", splits=["val2014"]))
    assert [(r["image_id"], r["caption_id"], r["caption"], r["split"]) for r in rows] == [
        ("42", "7", "A dog on a sofa.", "val"),
        ("42", "8", "a brown dog", "val"),
    ]
    err = capsys.readouterr().err
    assert "skipped 1 caption(s) whose image_id is not among the images" in err
    assert "1 image(s) have no caption" in err


# ---------------------------------------------------------------- Flickr8k


@pytest.mark.parametrize("image_folder", ["Flicker8k_Dataset", "Images"])
def test_flickr8k_official_layout(tmp_path, capsys, image_folder):
    for name in ("111_a.jpg", "222_b.jpg", "333_c.jpg", "444_d.jpg"):
        _png(tmp_path / image_folder / name, fmt="JPEG")
    (tmp_path / "Flickr8k.token.txt").write_text(
        "111_a.jpg#0\tA dog runs .\n111_a.jpg#1\tA brown dog running\n"
        "222_b.jpg#0\tTwo kids play .\n"
        "333_c.jpg#0\tA man on a bike .\n333_c.jpg#1\t   \n"
        "999_z.jpg.1#0\tstray line for an image in no split list\n"
        "garbage line without a hash\n"
    )
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("111_a.jpg\n")
    (tmp_path / "Flickr_8k.devImages.txt").write_text("222_b.jpg\n")
    (tmp_path / "Flickr_8k.testImages.txt").write_text("333_c.jpg\n444_d.jpg\n")  # 444 has no caption

    table = load_pairs(f"flickr8k:{tmp_path}")
    assert table.schema.equals(PAIRS_SCHEMA)
    got = [(r["image_id"], r["caption_id"], r["caption"], r["split"]) for r in _rows(table)]
    assert got == [
        ("111_a", "111_a#0", "A dog runs .", "train"),
        ("111_a", "111_a#1", "A brown dog running", "train"),
        ("222_b", "222_b#0", "Two kids play .", "val"),
        ("333_c", "333_c#0", "A man on a bike .", "test"),
    ]
    assert table.column("image_path")[0].as_py() == str((tmp_path / image_folder / "111_a.jpg").absolute())
    err = capsys.readouterr().err
    assert "skipped 1 empty caption(s)" in err
    assert "1 captioned image(s) are in no split list" in err
    assert "skipped 1 line(s)" in err
    assert "1 image(s) have no caption" in err  # 444_d
    assert load_pairs(f"flickr8k:{tmp_path}", splits=["dev"]).num_rows == 1


def test_flickr8k_missing_files_named(tmp_path):
    with pytest.raises(DataError, match="Flickr8k.token.txt"):
        load_pairs(f"flickr8k:{tmp_path}")
    (tmp_path / "Flickr8k.token.txt").write_text("1.jpg#0\tx\n")
    with pytest.raises(DataError, match="Flicker8k_Dataset"):
        load_pairs(f"flickr8k:{tmp_path}")
    (tmp_path / "Flicker8k_Dataset").mkdir()
    with pytest.raises(DataError, match=r"Flickr_8k\.trainImages\.txt"):
        load_pairs(f"flickr8k:{tmp_path}")


# ---------------------------------------------------------------- Karpathy splits


def test_karpathy_flickr_restval_and_coco_filepath(tmp_path):
    _png(tmp_path / "f1.jpg", fmt="JPEG")
    _png(tmp_path / "f2.jpg", fmt="JPEG")
    flickr = {
        "dataset": "flickr30k",
        "images": [
            {
                "filename": "f1.jpg",
                "split": "restval",
                "sentences": [{"raw": "a cat", "sentid": 0}, {"raw": "cat", "sentid": 1}],
            },
            {"filename": "f2.jpg", "split": "test", "sentences": [{"raw": "a dog", "sentid": 2}]},
        ],
    }
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(flickr))
    rows = _rows(load_pairs(f"karpathy:{tmp_path / 'dataset_flickr30k.json'}"))
    assert [(r["image_id"], r["caption_id"], r["split"]) for r in rows] == [
        ("f1", "0", "train"),
        ("f1", "1", "train"),
        ("f2", "2", "test"),
    ]
    assert rows[0]["image_path"] == str(tmp_path / "f1.jpg")

    images = tmp_path / "coco_images"
    _png(images / "val2014" / "COCO_val2014_000000000005.jpg", fmt="JPEG")
    coco = {
        "dataset": "coco",
        "images": [
            {
                "filepath": "val2014",
                "filename": "COCO_val2014_000000000005.jpg",
                "cocoid": 5,
                "split": "val",
                "sentences": [{"raw": "A plane.", "sentid": 10}],
            },
        ],
    }
    json_path = tmp_path / "ann" / "dataset_coco.json"
    json_path.parent.mkdir()
    json_path.write_text(json.dumps(coco))
    rows = _rows(load_pairs(f"karpathy:{json_path},{images}"))
    assert rows == [
        {
            "image_id": "5",
            "image_path": str(images / "val2014" / "COCO_val2014_000000000005.jpg"),
            "caption_id": "10",
            "caption": "A plane.",
            "split": "val",
        }
    ]
    # without IMAGES_DIR nothing is found beside the JSON: the error says how to point at the images
    with pytest.raises(DataError, match=r"none of the 1 image file\(s\) exist.*IMAGES_DIR"):
        load_pairs(f"karpathy:{json_path}")


def test_karpathy_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"not found: expected .*dataset_coco\.json"):
        load_pairs(f"karpathy:{tmp_path / 'dataset_coco.json'}")


# ---------------------------------------------------------------- manifests


def test_manifest_csv_relative_paths_default_split(tmp_path):
    _png(tmp_path / "imgs" / "a.png")
    _png(tmp_path / "imgs" / "b.png")
    outside = _png(tmp_path.parent / f"{tmp_path.name}_outside.png")
    (tmp_path / "m.csv").write_text(
        f'image_path,caption\nimgs/a.png,"a red, square"\nimgs/a.png,red block\n./imgs/b.png,green\n{outside},far away\n'
    )
    rows = _rows(load_pairs(f"manifest:{tmp_path / 'm.csv'}"))
    assert [(r["image_id"], r["caption_id"], r["caption"], r["split"]) for r in rows] == [
        ("imgs/a.png", "imgs/a.png#0", "a red, square", "train"),
        ("imgs/a.png", "imgs/a.png#1", "red block", "train"),
        ("imgs/b.png", "imgs/b.png#0", "green", "train"),
        (outside.as_posix(), f"{outside.as_posix()}#0", "far away", "train"),
    ]
    assert rows[2]["image_path"] == str(tmp_path / "imgs" / "b.png")


def test_manifest_parquet_with_split(tmp_path):
    _png(tmp_path / "001.png")
    _png(tmp_path / "002.png")
    table = pa.table(
        {
            "image_path": ["001.png", "002.png", "002.png"],
            "caption": ["one", "two", "deux"],
            "split": ["test", None, ""],
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    rows = _rows(load_pairs(f"manifest:{tmp_path / 'm.parquet'}"))
    assert [(r["image_id"], r["split"]) for r in rows] == [
        ("001.png", "test"),
        ("002.png", "train"),
        ("002.png", "train"),
    ]
    assert load_pairs(f"manifest:{tmp_path / 'm.parquet'}", splits="test").num_rows == 1


def test_manifest_bad_columns_and_format(tmp_path):
    (tmp_path / "m.csv").write_text("path,text\na.png,x\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) image_path, caption; found path, text"):
        load_pairs(f"manifest:{tmp_path / 'm.csv'}")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(DataError, match=r"\.csv or \.parquet"):
        load_pairs(f"manifest:{tmp_path / 'm.txt'}")
    with pytest.raises(DataError, match=r"manifest not found: expected .*nope\.csv"):
        load_pairs(f"manifest:{tmp_path / 'nope.csv'}")


# ---------------------------------------------------------------- bad input, any source


def test_missing_image_skipped_with_count_or_error_when_none_left(tmp_path, capsys):
    _png(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("image_path,caption\na.png,here\nb.png,gone one\nb.png,gone two\n")
    table = load_pairs(f"manifest:{tmp_path / 'm.csv'}")
    assert table.column("caption").to_pylist() == ["here"]
    err = capsys.readouterr().err
    assert "1 image file(s) missing or not a file, their 2 caption(s) skipped" in err and "b.png" in err
    # check_images=False keeps the rows (existence is the caller's business then)
    assert load_pairs(f"manifest:{tmp_path / 'm.csv'}", check_images=False).num_rows == 3
    (tmp_path / "a.png").unlink()
    with pytest.raises(DataError, match=r"none of the 2 image file\(s\) exist"):
        load_pairs(f"manifest:{tmp_path / 'm.csv'}")


def test_empty_captions_skipped_and_all_empty_is_an_error(tmp_path, capsys):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "m.csv").write_text('image_path,caption\na.png,kept\na.png,"   "\na.png,\nb.png,\n')
    table = load_pairs(f"manifest:{tmp_path / 'm.csv'}")
    assert table.column("caption").to_pylist() == ["kept"]
    err = capsys.readouterr().err
    assert "skipped 3 empty caption(s)" in err and "1 image(s) have no caption" in err
    (tmp_path / "m.csv").write_text("image_path,caption\na.png,\n")
    with pytest.raises(DataError, match="no usable"):
        load_pairs(f"manifest:{tmp_path / 'm.csv'}")


def test_unknown_split_names_available(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "m.csv").write_text("image_path,caption,split\na.png,x,train\nb.png,y,test\n")
    with pytest.raises(DataError, match=r"no split named 'validation2'; available splits: train, test"):
        load_pairs(f"manifest:{tmp_path / 'm.csv'}", splits=["train", "validation2"])


def test_image_in_two_splits_is_an_error(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("image_path,caption,split\na.png,x,train\na.png,y,test\n")
    with pytest.raises(DataError, match=r"'a.png' is in two splits: train and test"):
        load_pairs(f"manifest:{tmp_path / 'm.csv'}")


def test_parse_spec_errors_list_kinds():
    assert parse_spec("COCO:/data/c:o") == ("coco", "/data/c:o")
    with pytest.raises(
        DataError, match=r"unknown data kind 'imagenet'.*flickr8k:DIR.*karpathy:.*coco:.*manifest:.*synth:"
    ):
        parse_spec("imagenet:/x")
    with pytest.raises(DataError, match="no KIND: prefix.*synth:DIR"):
        load_pairs("/just/a/path")
    with pytest.raises(DataError, match="has no path"):
        parse_spec("coco:")
    assert issubclass(DataError, ImtextError)


def test_synth_spec_on_missing_world_says_how_to_make_one(tmp_path):
    with pytest.raises(DataError, match=r"does not exist; create it with `imtext data synth --out"):
        load_pairs(f"synth:{tmp_path / 'nowhere'}")
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match="is not a synthetic world"):
        load_pairs(f"synth:{tmp_path / 'junk'}")


def test_load_image_bad_files(tmp_path):
    good = _png(tmp_path / "ok.jpg", fmt="JPEG")
    img = load_image(good)
    assert img.mode == "RGB" and img.size == (8, 6)
    gray = tmp_path / "gray.png"
    Image.new("L", (4, 4), 128).save(gray)
    assert load_image(gray).getpixel((0, 0)) == (128, 128, 128)

    big = tmp_path / "big.jpg"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(big, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(big.read_bytes()[: len(big.read_bytes()) // 2])
    with pytest.raises(DataError, match="truncated.jpg"):
        load_image(truncated)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match=r"not a readable image.*text\.png"):
        load_image(tmp_path / "text.png")
    with pytest.raises(DataError, match=r"image not found: .*missing\.png"):
        load_image(tmp_path / "missing.png")


def test_image_roots_name_each_source_folder(tmp_path):
    from imtext.data import image_roots

    real = tmp_path.resolve()
    assert image_roots(f"coco:{tmp_path}") == [str(real)]
    assert image_roots(f"flickr8k:{tmp_path}") == [str(real)]
    assert image_roots(f"karpathy:{tmp_path / 'd.json'}") == [str(real)]
    assert image_roots(f"karpathy:{tmp_path / 'd.json'},{tmp_path / 'imgs'}") == [str(real / "imgs")]
    assert image_roots(f"manifest:{tmp_path / 'm.csv'}") == [str(real)]
    assert image_roots(f"synth:{tmp_path / 'w'}") == [str(real / "w")]
