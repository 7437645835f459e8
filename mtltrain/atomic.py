"""Files that are replaced whole: a reader, or a kill at any instant, sees the old file or the
new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mtltrain.errors import OutputError


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` into a temporary file beside `path`, flush it to disk, then rename it over
    `path`. A write that fails (a full disk: with the bytes it needs and those free) removes
    the temporary file and raises an OutputError; `path` keeps its old content."""
    write_all_atomically({path: data}, "any earlier one is kept")


def write_all_atomically(files: Mapping[Path, bytes], kept: str = "no file was changed") -> None:
    """Every file or none: each written into a temporary file beside its path and flushed to
    disk, then all renamed over their paths. A write that fails (a read-only folder, a full
    disk) removes the temporary files and raises an OutputError that ends with `kept`: every
    path keeps its old content and no new file is left. (Renames within a folder that took the
    writes fail only on a fault of the disk; the error then says which files were already
    replaced.)"""
    staged: list[Path] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            staged.append(_temporary(path))
            with staged[-1].open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except BaseException as e:
        _remove_all(staged)
        if isinstance(e, OSError):
            raise _output_error(path, e, len(data), kept) from None
        raise
    done: list[str] = []
    for path, tmp in zip(files, staged, strict=True):
        try:
            os.replace(tmp, path)
        except OSError as e:
            _remove_all(staged)
            raise _output_error(path, e, 0, f"replaced before it: {done or 'none'}") from None
        done.append(path.name)


def torch_bytes(obj: Any) -> bytes:
    """What torch.save writes for `obj`, in memory: written with `write_atomically`, a full
    disk is then an OSError of the file, not an error inside torch's zip writer."""
    import torch  # here: the CLI imports this module before it needs torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def byte_size(n: float) -> str:
    """A number of bytes for people: 512 B, 40 KiB, 1.5 MiB, 2.0 GiB."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit != "MiB" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _output_error(path: Path, e: OSError, size: int, consequence: str) -> OutputError:
    """The one line of a write that failed; on a full disk, with the bytes it needed."""
    reason = e.strerror or type(e).__name__
    if e.errno == errno.ENOSPC:
        free = shutil.disk_usage(existing_folder(path.parent)).free
        reason += f": it needs {byte_size(size)}, {byte_size(free)} are free"
    return OutputError(f"could not write {path} ({reason}); {consequence}")


def existing_folder(folder: Path) -> Path:
    """`folder`, or its nearest ancestor that exists."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")  # concurrent writers: one each


def _remove_all(paths: Iterable[Path]) -> None:
    for path in paths:
        _remove(path)


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):  # what made the write fail may stop this too
        tmp.unlink(missing_ok=True)
