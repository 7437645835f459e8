"""Files that are replaced whole: a reader, or a kill at any instant, sees the old file or the
new one, never half of one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from mtltrain.errors import OutputError


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` the new content into a temporary file beside `path`, flush it to disk, then
    rename it over `path`. A write that fails (a full disk) removes the temporary file and
    raises an OutputError; `path` keeps its old content."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # concurrent writers: one each
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


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):  # what made the write fail may stop this too
        tmp.unlink(missing_ok=True)
