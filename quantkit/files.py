"""Writing files so that a crash never leaves half of one behind: write beside, fsync, rename."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write_bytes` for text (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def temp_name(path: str | Path) -> Path:
    """The temporary sibling a writer of `path` uses in this process (`<name>.tmp<pid>`)."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


def session_folder(prefix: str) -> Path:
    """A new temporary folder that is removed when this Python process exits (for results nobody asked to keep:
    pass an explicit folder to keep them)."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


__all__ = ["atomic_write_bytes", "atomic_write_text", "session_folder", "temp_name"]
