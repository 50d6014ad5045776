"""The output folder of a comparison: results.jsonl (one fsynced line per finished variant), meta.json, the lock.

A crash or `kill -9` loses at most the variant in progress: a line cut short is dropped on the next run,
and a rerun on the same folder skips the variants already recorded (settings that differ are refused).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.jsonl"
META_FILE = "meta.json"
IMAGES_DIR = "images"
SENSITIVITY_DIR = "sensitivity"
WORK_DIR = ".work"
LOCK_FILE = ".lock"
FORMAT = 1

# Record fields that depend on timing or on the machine, not on the numbers a rerun must reproduce.
TIMING_FIELDS = (
    "load_s",
    "latency_s",
    "latency_min_s",
    "latency_samples_s",
    "timings",
    "peak_load_rss",
    "peak_gen_rss",
    "rss_start",
    "rss_after_load",
    "peak_load_cuda_allocated",
    "peak_load_cuda_reserved",
    "peak_gen_cuda_allocated",
    "peak_gen_cuda_reserved",
    "finished_at",
    "pid",
    "environment",
    "memory_method",
)


def jsonable(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN to null, ±inf to the strings "inf"/"-inf" (read back as floats)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalar
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


_FLOAT_FIELDS = ("psnr", "psnr_min", "ssim", "ssim_min", "lpips", "clip_score", "adherence")


def _decode(record: dict) -> dict:
    for key in _FLOAT_FIELDS:
        if record.get(key) in ("inf", "-inf"):
            record[key] = float(record[key])
    return record


def read_records(folder: str | Path) -> list[dict]:
    """The records in `folder/results.jsonl`, in the order they were written.

    A last line cut short by a crash is ignored (it was never a finished record); other unreadable lines raise.
    """
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(_decode(json.loads(line)))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline after it: an append interrupted by a crash
                continue
            raise ValueError(
                f"Line {i + 1} of {path} is not JSON; the file was edited or damaged. Remove that line "
                "(the variant then runs again) or start a new output folder."
            ) from None
    return records


def repair(path: Path) -> None:
    """Drop a last line that a crash cut short, so the next append starts on a line of its own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_bytes(keep)
        os.replace(tmp, path)


def append_record(folder: str | Path, record: dict) -> None:
    """Append one record as one line: a single write, flushed and fsynced before returning."""
    line = json.dumps(jsonable(record), allow_nan=False) + "\n"
    with open(Path(folder) / RESULTS_FILE, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def rewrite_records(folder: Path, records: list[dict]) -> None:
    tmp = folder / (RESULTS_FILE + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(jsonable(r), allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / RESULTS_FILE)


def reference(folder: Path) -> tuple[str, str] | None:
    """(name, images.npy path relative to folder) of the baseline, once it has finished well."""
    for r in read_records(folder):
        if r.get("config") is None and r.get("status") == "ok" and r.get("images_npy"):
            return r["variant"], r["images_npy"]
    return None


def start_or_resume(folder: Path, settings: dict) -> dict:
    path = folder / META_FILE
    if path.is_file():
        meta = json.loads(path.read_text())
        old = meta.get("settings", {})
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            what = "; ".join(f"{k}: {old.get(k)!r} there, {settings[k]!r} now" for k in diff)
            raise ValueError(
                f"{folder} holds results made with other settings ({what}). Its images cannot be "
                "compared with new ones: pass a new output folder, or delete this one."
            )
        return meta
    if (folder / RESULTS_FILE).is_file():
        raise ValueError(
            f"{folder} has {RESULTS_FILE} but no {META_FILE}; it was not written by quantkit.compare. "
            "Pass a new output folder."
        )
    from ..measure.environment import host

    meta = {"settings": settings, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": host()}
    tmp = folder / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path)
    return meta


class Lock:
    """An exclusive lock on the output folder (flock: released by the kernel when the process dies)."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE
        self.handle = None

    def __enter__(self):
        self.handle = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            return self
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise RuntimeError(
                f"Another process is writing to {self.path.parent} (it holds {self.path}); wait for "
                "it to finish, or use another output folder."
            ) from None
        return self

    def __exit__(self, *exc):
        self.handle.close()


__all__ = [
    "TIMING_FIELDS",
    "FORMAT",
    "IMAGES_DIR",
    "LOCK_FILE",
    "META_FILE",
    "RESULTS_FILE",
    "SENSITIVITY_DIR",
    "WORK_DIR",
    "Lock",
    "append_record",
    "jsonable",
    "read_records",
    "reference",
    "repair",
    "rewrite_records",
    "start_or_resume",
]
