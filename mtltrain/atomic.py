"""Files that are replaced whole: a reader, or a kill at any instant, sees the old file or the
new one, never half of one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

from mtltrain.errors import OutputError


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` the new content into a temporary file beside `path`, flush it to disk, then
    rename it over `path`. A write that fails (a full disk) removes the temporary file and
    raises an OutputError; `path` keeps its old content."""
    tmp = _temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        reason = e.strerror or type(e).__name__
        raise OutputError(f"could not write {path} ({reason}); any earlier one is kept") from None
    except BaseException:
        _remove(tmp)
        raise


def write_all_atomically(files: Mapping[Path, bytes]) -> None:
    """Every file or none: each written into a temporary file beside its path and flushed to
    disk, then all renamed over their paths. A write that fails (a read-only folder, a full
    disk) removes the temporary files and raises an OutputError: every path keeps its old
    content and no new file is left. (Renames within a folder that took the writes fail only
    on a fault of the disk; the error then says which files were already replaced.)"""
    staged: list[Path] = []
    try:
        for path, data in files.items():
            staged.append(_temporary(path))
            with staged[-1].open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except BaseException as e:
        _remove_all(staged)
        if isinstance(e, OSError):
            raise _output_error(path, e, "no file was changed") from None
        raise
    done: list[str] = []
    for path, tmp in zip(files, staged, strict=True):
        try:
            os.replace(tmp, path)
        except OSError as e:
            _remove_all(staged)
            raise _output_error(path, e, f"replaced before it: {done or 'none'}") from None
        done.append(path.name)


def _output_error(path: Path, e: OSError, consequence: str) -> OutputError:
    return OutputError(f"could not write {path} ({e.strerror or type(e).__name__}); {consequence}")


def _remove_all(paths: Iterable[Path]) -> None:
    for path in paths:
        _remove(path)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")  # concurrent writers: one each


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):  # what made the write fail may stop this too
        tmp.unlink(missing_ok=True)
