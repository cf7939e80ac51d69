"""Where runs, checkpoints and models go: a local folder or a URI (`s3://`, `gs://`, `file://`, any scheme
pyarrow knows). URIs stay URIs: Ray Train and Tune take them as `storage_path` and reach them through
pyarrow filesystems on every node; `Path("s3://b/runs")` would make a local folder named `s3:`.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from imtext.errors import ImtextError


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def absolute(path: str | os.PathLike) -> str:
    """A URI as it is (without a trailing slash); a local path made absolute (Ray's workers run elsewhere)."""
    text = str(path)
    if is_uri(text):
        scheme, rest = text.split("://", 1)
        return f"{scheme}://{rest.rstrip('/') or '/'}"
    return str(Path(text).expanduser().resolve())


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base/part/...` for a URI or a local path."""
    base = str(base)
    if is_uri(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def split(path: str | os.PathLike) -> tuple[str, str]:
    """(parent, name) of a URI or a local path."""
    path = absolute(path)
    if is_uri(path):
        scheme, rest = path.split("://", 1)
        parent, name = posixpath.split(rest)
        return f"{scheme}://{parent}", name
    p = Path(path)
    return str(p.parent), p.name


def filesystem(path: str | os.PathLike):
    """(pyarrow filesystem, path inside it) for a URI or a local path."""
    import pyarrow.fs

    path = absolute(path)
    if not is_uri(path):
        return pyarrow.fs.LocalFileSystem(), path
    try:
        return pyarrow.fs.FileSystem.from_uri(path)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, OSError) as e:
        raise ImtextError(
            f"cannot open {path}: {e} (s3:// needs AWS credentials, gs:// GCP credentials)"
        ) from None


def _info(path: str):
    import pyarrow.fs

    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    return fs, inner, info, pyarrow.fs.FileType


def exists(path: str | os.PathLike) -> bool:
    _, _, info, kinds = _info(str(path))
    return info.type != kinds.NotFound


def is_file(path: str | os.PathLike) -> bool:
    _, _, info, kinds = _info(str(path))
    return info.type == kinds.File


def list_names(path: str | os.PathLike) -> list[str]:
    """Names directly under a folder (empty when it does not exist)."""
    import pyarrow.fs

    fs, inner, info, kinds = _info(str(path))
    if info.type != kinds.Directory:
        return []
    return sorted(posixpath.basename(i.path) for i in fs.get_file_info(pyarrow.fs.FileSelector(inner)))


def delete_dir(path: str | os.PathLike) -> None:
    fs, inner = filesystem(path)
    fs.delete_dir(inner)


def clear_dir(path: str | os.PathLike) -> None:
    """Remove what is under a folder, keeping the folder (nothing happens when it does not exist)."""
    fs, inner = filesystem(path)
    fs.delete_dir_contents(inner, missing_dir_ok=True)


def read_text(path: str | os.PathLike) -> str:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as f:
        return f.read().decode()


def upload_dir(local: str | os.PathLike, dest: str | os.PathLike, last: tuple[str, ...] = ()) -> str:
    """Copy the files of a local folder into `dest` (a URI or a folder), the names in `last` after the rest,
    so that a reader who checks for them never sees a half-copied folder. Returns `dest`."""
    import pyarrow.fs

    fs, inner = filesystem(dest)
    fs.create_dir(inner, recursive=True)
    local = Path(local)
    items = sorted(local.iterdir(), key=lambda p: (p.name in last, p.name))
    src = pyarrow.fs.LocalFileSystem()
    for item in items:  # a folder is copied with everything under it
        target = posixpath.join(inner, item.name)
        if item.is_dir():
            fs.create_dir(target, recursive=True)  # object stores have no folders; local ones need them
        pyarrow.fs.copy_files(str(item), target, source_filesystem=src, destination_filesystem=fs)
    return absolute(dest)
