"""Property tests for the annotation loaders (#13 item 5): whatever an annotation file holds, loading it
gives imtext's DataError or a valid pairs table, never another traceback; and no annotation file can pull
a file from outside its images folder into the data (absolute or `..` image paths are refused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from imtext.data import PAIRS_SCHEMA, load_pairs
from imtext.errors import DataError

SETTINGS = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# JSON values of any shape, including the right keys holding the wrong types
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(
    [
        "id",
        "file_name",
        "image_id",
        "caption",
        "images",
        "annotations",
        "filename",
        "split",
        "sentences",
        "raw",
        "sentid",
        "filepath",
        "cocoid",
    ]
)
VALUE = SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(KEYS, SCALARS, max_size=3)
ENTRY = st.dictionaries(KEYS, VALUE | JSON, max_size=6)
# names that leave the images folder, in the forms annotation files could use
ESCAPES = st.sampled_from(
    [
        "/etc/passwd",
        "../secret.png",
        "a/../../secret.png",
        "..",
        "C:\\Windows\\win.ini",
        "..\\secret.png",
        "/",
        "sub/../../../etc/hosts",
        "\\\\server\\share\\x.png",
    ]
)


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)
    return path


def _load(spec: str):
    """Load; the only exception allowed is DataError, and a table must be a valid pairs table."""
    try:
        table = load_pairs(spec)
    except DataError as e:
        assert str(e)
        return None
    assert table.schema.equals(PAIRS_SCHEMA) and table.num_rows > 0
    return table


def _coco(root: Path, document) -> str:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps(document))
    return f"coco:{root}"


# ---- any content: DataError or a table ---------------------------------------------------------------


@SETTINGS
@given(
    document=JSON
    | st.fixed_dictionaries(
        {"images": st.lists(ENTRY, max_size=4), "annotations": st.lists(ENTRY, max_size=4) | JSON}
    )
)
def test_coco_any_json_is_a_data_error_or_pairs(tmp_path_factory, document):
    root = tmp_path_factory.mktemp("coco")
    _png(root / "train2017" / "1.png")
    _load(_coco(root, document))


@SETTINGS
@given(document=JSON | st.fixed_dictionaries({"images": st.lists(ENTRY, max_size=4) | JSON}))
def test_karpathy_any_json_is_a_data_error_or_pairs(tmp_path_factory, document):
    root = tmp_path_factory.mktemp("karpathy")
    _png(root / "1.png")
    path = root / "dataset_x.json"
    path.write_text(json.dumps(document))
    _load(f"karpathy:{path}")


@SETTINGS
@given(text=st.text(max_size=300), raw=st.binary(max_size=200), use_raw=st.booleans())
def test_flickr8k_any_token_file_is_a_data_error_or_pairs(tmp_path_factory, text, raw, use_raw):
    root = tmp_path_factory.mktemp("flickr")
    _png(root / "Flicker8k_Dataset" / "1.jpg")
    token = root / "Flickr8k.token.txt"
    token.write_bytes(raw if use_raw else text.encode("utf-8", "surrogatepass"))
    for name in ("Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt", "Flickr_8k.testImages.txt"):
        (root / name).write_text("1.jpg\n" if "train" in name else "")
    _load(f"flickr8k:{root}")


@SETTINGS
@given(raw=st.binary(max_size=300), text=st.text(max_size=300), use_raw=st.booleans())
def test_manifest_any_csv_is_a_data_error_or_pairs(tmp_path_factory, raw, text, use_raw):
    root = tmp_path_factory.mktemp("manifest")
    _png(root / "a.png")
    path = root / "m.csv"
    path.write_bytes(
        raw if use_raw else ("image_path,caption,split\n" + text).encode("utf-8", "surrogatepass")
    )
    _load(f"manifest:{path}")


# ---- image paths never leave the images folder -----------------------------------------------------


@SETTINGS
@given(name=ESCAPES)
def test_coco_refuses_paths_outside_the_images_folder(tmp_path_factory, name):
    root = tmp_path_factory.mktemp("coco")
    _png(root / "secret.png")
    doc = {
        "images": [{"id": 1, "file_name": name}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "x"}],
    }
    with pytest.raises(DataError, match="outside the images folder"):
        load_pairs(_coco(root / "data", doc))


@SETTINGS
@given(name=ESCAPES, in_filepath=st.booleans())
def test_karpathy_refuses_paths_outside_the_images_folder(tmp_path_factory, name, in_filepath):
    root = tmp_path_factory.mktemp("karpathy")
    _png(root / "secret.png")
    entry = {"filename": "x.png", "filepath": name} if in_filepath else {"filename": name}
    entry.update(split="train", sentences=[{"raw": "a caption", "sentid": 1}])
    path = root / "data" / "dataset_x.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"images": [entry]}))
    with pytest.raises(DataError, match="outside the images folder"):
        load_pairs(f"karpathy:{path}")


@SETTINGS
@given(name=ESCAPES)
def test_flickr8k_refuses_paths_outside_the_images_folder(tmp_path_factory, name):
    assume("\t" not in name and "#" not in name)
    root = tmp_path_factory.mktemp("flickr")
    _png(root / "Flicker8k_Dataset" / "1.jpg")
    (root / "Flickr8k.token.txt").write_text(f"{name}#0\ta caption\n1.jpg#0\tanother\n")
    (root / "Flickr_8k.trainImages.txt").write_text(f"{name}\n1.jpg\n")
    (root / "Flickr_8k.devImages.txt").write_text("")
    (root / "Flickr_8k.testImages.txt").write_text("")
    with pytest.raises(DataError, match="outside the images folder"):
        load_pairs(f"flickr8k:{root}")


def test_plain_names_still_load(tmp_path):
    """The refusals leave ordinary annotation files alone (subfolders included)."""
    _png(tmp_path / "train2017" / "sub" / "1.png")
    doc = {
        "images": [{"id": 1, "file_name": "sub/1.png"}],
        "annotations": [{"id": 5, "image_id": 1, "caption": "x"}],
    }
    table = load_pairs(_coco(tmp_path, doc))
    assert table.column("image_path").to_pylist() == [str(tmp_path / "train2017" / "sub" / "1.png")]
