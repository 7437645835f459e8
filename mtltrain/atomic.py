"""Files that are replaced whole: a reader, or a kill at any instant, sees the old file or the
new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
from pathlib import Path
from typing import Any

from mtltrain.errors import OutputError


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` into a temporary file beside `path`, flush it to disk, then rename it over
    `path`. A write that fails (a full disk: with the bytes it needs and those free) removes
    the temporary file and raises an OutputError; `path` keeps its old content."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # concurrent writers: one each
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        reason = e.strerror or type(e).__name__
        if e.errno == errno.ENOSPC:
            free = shutil.disk_usage(path.parent).free
            reason += f": it needs {byte_size(len(data))}, {byte_size(free)} are free"
        raise OutputError(f"could not write {path} ({reason}); any earlier one is kept") from None
    except BaseException:
        _remove(tmp)
        raise


def torch_bytes(obj: Any) -> bytes:
    """What torch.save writes for `obj`, in memory: written with `write_atomically`, a full
    disk is then an OSError of the file, not an error inside torch's zip writer."""
    import torch  # here: the CLI imports this module before it needs torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def byte_size(n: int) -> str:
    """A number of bytes for people: 512 B, 40 KiB, 1.5 MiB, 2.0 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):  # what made the write fail may stop this too
        tmp.unlink(missing_ok=True)
