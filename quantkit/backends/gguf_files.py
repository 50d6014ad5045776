"""GGUF files: writing a component's weights as llama.cpp blocks, reading them back, and the cache.

quantkit writes a component's Linear weights into a GGUF file with the `gguf` package (numpy, one
tensor at a time, atomic rename), keeps it in a cache keyed by the source files, the format and the
layer set, and streams tensors back out of it with plain reads (`GGUFSource`). The adapter that plans
and loads with these files is `quantkit.backends.gguf`.

The cache verifies what it trusts. Beside each file it writes a record, `<file>.gguf.json`: the sha256 of the
source tensors (hashed while they are read for writing, so it costs no extra read), the source files' sizes and
mtimes, and the size, mtime and sha256 of the written file. Before a cached file is used:
- no record, an unreadable one, a wrong size or an unparsable GGUF header: the file is rewritten (with a warning);
- the file's mtime differs from the record: its bytes are hashed again, and a mismatch is rewritten;
- the source files' sizes or mtimes differ: the source tensors are hashed again, and a mismatch is rewritten.
An unchanged file is trusted on its size and mtime alone: hashing costs about 0.15 s per 100 MiB here (sha256, the
fastest of hashlib's on this CPU), i.e. ~20 s for a 12 GB FLUX file on every load. A file given by the user
(`gguf_file=`) is never rewritten: what is wrong with it is reported with its path. Temporary files of writers
that died (`*.gguf.tmp<pid>`, the pid no longer running) are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

from ..errors import one_of, user_path

# quant type -> (weights per block, bytes per block), as gguf.GGML_QUANT_SIZES has them
BLOCKS = {
    "Q8_0": (32, 34),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "BF16": (1, 2),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}
# what quantkit writes: the gguf package's own legacy types, and the K-quants (quantkit.backends.gguf_kquants)
WRITABLE = ("Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K", "BF16")
# mixes in the community's style: a base K type, some layers raised or kept in float (quantkit.backends.gguf_mixes)
MIXES = ("Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q3_K_M", "Q3_K_S")
FORMAT_VERSION = 2  # bump when the files quantkit writes change (2: K-quants, mixes, a record beside each file)
RECORD_SUFFIX = ".json"  # the record beside a written file: <name>.gguf.json
_TEMP = re.compile(r"\.tmp(\d+)$")  # what a writer that died leaves: <name>.tmp<pid>


def cache_dir() -> Path:
    """Where written GGUF files are kept: $QUANTKIT_CACHE/gguf, default ~/.cache/quantkit/gguf."""
    return Path(os.environ.get("QUANTKIT_CACHE", Path.home() / ".cache" / "quantkit")) / "gguf"


def pack(weight, quant_type: str):
    """A 2-D weight (out, in) packed into GGUF blocks of `quant_type`, as a numpy uint8 array: K-quants by
    quantkit's own writer (the gguf package cannot write them), the other types by the gguf package."""
    import gguf

    from .gguf_kquants import K_TYPES, quantize_k

    if quant_type in K_TYPES:
        return quantize_k(weight.float().cpu().numpy() if hasattr(weight, "cpu") else weight, quant_type)
    qtype = getattr(gguf.GGMLQuantizationType, quant_type)
    array = weight.float().cpu().numpy() if hasattr(weight, "cpu") else weight
    return gguf.quants.quantize(array, qtype)


def quantize_tensor(weight, quant_type: str):
    """Quantize a 2-D weight (out, in) into GGUF blocks; returns a packed `GGUFParameter` (uint8)."""
    import gguf
    import torch
    from diffusers.quantizers.gguf.utils import GGUFParameter

    qtype = getattr(gguf.GGMLQuantizationType, quant_type)
    return GGUFParameter(torch.from_numpy(pack(weight, quant_type)), quant_type=qtype)


# -- files --------------------------------------------------------------------------------------


def cache_key(folder: Path, quant_type: str, quantize: list[str]) -> str:
    """A key that changes with the source files (where they are, their sizes), the format and the layer set.

    Their mtimes are not in the key: they are in the file's record, and a changed mtime makes the cache hash the
    source tensors again (a touched or copied checkpoint is not quantized again; a retrained one is)."""
    from ..checkpoint import weight_files

    h = hashlib.sha256(f"v{FORMAT_VERSION}|{quant_type}|{','.join(sorted(quantize))}".encode())
    for file in weight_files(folder):
        h.update(f"|{file.resolve()}|{file.stat().st_size}".encode())
    return h.hexdigest()[:16]


def record_path(path: str | Path) -> Path:
    """Where the record of a written GGUF file lives: beside it, `<name>.gguf.json`."""
    path = Path(path)
    return path.with_name(path.name + RECORD_SUFFIX)


def source_files(folder: Path) -> list[dict[str, Any]]:
    """The source weight files as the record stores them: name, size, mtime (ns)."""
    from ..checkpoint import weight_files

    return [{"file": f.name, "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns} for f in weight_files(folder)]


def _hash_tensor(h, key: str, tensor) -> None:
    """Add one source tensor (name, dtype, shape, raw bytes) to the source hash."""
    import torch

    h.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    if tensor.numel():
        h.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)


def source_digest(folder: str | Path) -> str:
    """sha256 of a component's source tensors (names, dtypes, shapes, bytes), read one at a time."""
    from ..checkpoint import SafetensorsSource

    source = SafetensorsSource(folder)
    h = hashlib.sha256()
    try:
        for key in source.keys():
            _hash_tensor(h, key, source.get(key))
    finally:
        source.close()
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):  # 8 MiB at a time (hashlib.file_digest is Python 3.11+)
            h.update(chunk)
    return h.hexdigest()


def write_record(path: Path, folder: Path, quant_type: str, quantize: list[str], source_sha: str) -> Path:
    """Write the record beside a GGUF file just written: what it was made from, and its own size and hash."""
    from ..files import atomic_write_text

    st = path.stat()
    record = {
        "format_version": FORMAT_VERSION,
        "quant_type": quant_type,
        "layers_sha256": hashlib.sha256(",".join(sorted(quantize)).encode()).hexdigest(),
        "source": {"folder": str(Path(folder).resolve()), "files": source_files(Path(folder)), "sha256": source_sha},
        "file": {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_digest(path)},
    }
    return atomic_write_text(record_path(path), json.dumps(record, indent=1))


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(record_path(path).read_text())
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(record, dict)
        and record.get("format_version") == FORMAT_VERSION
        and isinstance(record.get("file"), dict)
        and isinstance(record.get("source"), dict)
    )
    return record if ok else None


def cache_problem(path: Path, folder: Path) -> str | None:
    """Why a cached GGUF file cannot be trusted (None when it can); re-stamps a record whose file or source was
    touched but whose content hashes still match.

    Returns:
        a reason such as "it is truncated (1000 bytes, 2000 expected)", or None.
    """
    record = _read_record(path)
    if record is None:
        state = "is unreadable" if record_path(path).exists() else "is missing"
        return f"its record {record_path(path).name} {state}, so what it was written from is unknown"
    st = path.stat()
    want = record["file"]
    if st.st_size != want.get("size"):
        return f"it is truncated or overwritten ({st.st_size} bytes, {want.get('size')} written)"
    try:
        read_gguf(path)
    except ValueError as err:
        return f"its header does not parse ({err})"
    changed = False
    if st.st_mtime_ns != want.get("mtime_ns"):
        if file_digest(path) != want.get("sha256"):
            return "its bytes changed since it was written (sha256 mismatch)"
        want["mtime_ns"], changed = st.st_mtime_ns, True
    files = source_files(folder)
    if files != record["source"].get("files"):
        if source_digest(folder) != record["source"].get("sha256"):
            return f"the source weights in {folder} changed since it was written (sha256 mismatch)"
        record["source"]["files"], changed = files, True
    if changed:
        from ..files import atomic_write_text

        atomic_write_text(record_path(path), json.dumps(record, indent=1))
    return None


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files (`*.tmp<pid>`) in `folder` whose writer is no longer running; returns them."""
    removed = []
    if not folder.is_dir():
        return removed
    for file in folder.iterdir():
        match = _TEMP.search(file.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        try:
            file.unlink()
            removed.append(file)
        except OSError:  # another process removed it first, or it is not ours to remove
            pass
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):  # someone else's process, or not a pid at all
        return True
    return True


def write_gguf(
    folder: str | Path,
    path: str | Path,
    quant_type: str,
    quantize: list[str],
    *,
    progress: bool = False,
    types: dict[str, str] | None = None,
) -> Path:
    """Write a component's weights to a GGUF file, quantizing the named Linear weights.

    Tensors are read one at a time from the component's safetensors. Weights named in `quantize`
    become `quant_type` blocks; every other tensor is stored as float32 (F32). The file is written
    to a temporary name and renamed at the end, so a crash never leaves a half-written file behind; then its
    record (`record_path(path)`: source hash, file size and hash) is written beside it.

    Args:
        folder: the component folder (config.json + safetensors).
        path: where to write the `.gguf` file.
        quant_type: one of WRITABLE.
        quantize: tensor names (e.g. "transformer_blocks.0.attn.to_q.weight") to quantize.
        progress: show a tqdm bar.
        types: {tensor name: type} where a mix gives tensors their own types (default: `quant_type` for all).

    Returns:
        The path written.
    """
    import gguf
    import numpy as np
    from tqdm.auto import tqdm

    from ..checkpoint import SafetensorsSource

    if quant_type not in WRITABLE and quant_type not in MIXES:
        raise ValueError(f"quantkit writes GGUF as {one_of(WRITABLE + MIXES)}, not {quant_type!r}.")
    types = dict(types or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    source = SafetensorsSource(folder)
    wanted = set(quantize)
    source_hash = hashlib.sha256()
    try:
        writer = gguf.GGUFWriter(str(tmp), arch="quantkit")
        writer.add_string("quantkit.source", str(Path(folder).resolve()))
        writer.add_string("quantkit.quant_type", quant_type)
        writer.add_uint32("quantkit.format_version", FORMAT_VERSION)
        for key in tqdm(
            source.keys(), desc=f"GGUF {quant_type} {Path(folder).name}", disable=not progress, leave=False
        ):
            raw = source.get(key)
            _hash_tensor(source_hash, key, raw)
            tensor = raw.float()
            del raw
            if key in wanted:
                kind = types.get(key, quant_type)
                qtype = getattr(gguf.GGMLQuantizationType, kind)
                writer.add_tensor(key, pack(tensor, kind), raw_dtype=qtype)
            else:
                writer.add_tensor(key, np.ascontiguousarray(tensor.numpy()))
            del tensor
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        source.close()
        if tmp.exists():
            tmp.unlink()
    write_record(path, Path(folder), quant_type, list(quantize), source_hash.hexdigest())
    return path


def read_gguf(path: str | Path):
    """Open a GGUF file, turning any parse failure into a ValueError that says what to do."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GGUF file {path} does not exist. Check the path, or leave gguf_file out to let quantkit write one."
        )
    try:
        return gguf.GGUFReader(str(path))
    except Exception as err:  # the gguf package raises ValueError, struct.error, IndexError ... on bad files
        raise ValueError(
            f"{path} is not a valid GGUF file ({type(err).__name__}: {err}). It is corrupt or "
            "truncated: delete it and load again (quantkit rewrites its own files), or download it "
            "again."
        ) from None


def gguf_shapes(reader) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name -> (logical shape in torch order, quant type name)."""
    return {t.name: (tuple(int(s) for s in reversed(t.shape.tolist())), t.tensor_type.name) for t in reader.tensors}


def check_matches(path: Path, reader, expected: dict[str, tuple[int, ...]], component: str) -> None:
    """Raise ValueError when the file's tensors do not match the component's (names and shapes)."""
    found = gguf_shapes(reader)
    missing = sorted(set(expected) - set(found))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != found[k][0])
    if missing or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} tensors missing (first: {missing[0]!r})")
        if wrong:
            k = wrong[0]
            detail.append(f"{len(wrong)} with other shapes (first: {k!r} is {found[k][0]}, expected {expected[k]})")
        raise ValueError(
            f"GGUF file {path} does not match component {component!r}: {'; '.join(detail)}. "
            "Pass the file made for this model, or leave gguf_file out to let quantkit write one."
        )


class GGUFSource:
    """Tensors of a GGUF file in the SafetensorsSource protocol: packed weights as GGUFParameter.

    The header is parsed by the `gguf` package; tensor data is read with plain file reads at the offsets it
    gives (not through its memory map, whose touched pages would count as resident memory).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        reader = read_gguf(self.path)
        self._tensors = {
            t.name: (int(t.data_offset), int(t.n_bytes), t.tensor_type, tuple(t.data.shape)) for t in reader.tensors
        }
        del reader
        size = self.path.stat().st_size
        end = max((offset + n for offset, n, _, _ in self._tensors.values()), default=0)
        if end > size:
            raise ValueError(
                f"{self.path} is truncated: its tensors end at byte {end} but the file has {size}. Delete it and load "
                "again (quantkit rewrites its own files), or download it again."
            )

    def keys(self) -> list[str]:
        return list(self._tensors)

    def get(self, key: str):
        import torch
        from diffusers.quantizers.gguf.utils import GGUFParameter

        offset, size, kind, shape = self._tensors[key]
        if kind.name not in ("F32", "F16") and kind.name not in BLOCKS:
            raise ValueError(
                f"{self.path}: tensor {key!r} has type {kind.name}, which quantkit cannot load. "
                f"Supported: F32, F16, {', '.join(BLOCKS)}."
            )
        buffer = bytearray(size)
        with self.path.open("rb") as f:
            f.seek(offset)
            if f.readinto(buffer) != size:
                raise ValueError(f"{self.path} is truncated: delete it and load again, or download it again.")
        dtype = {"F32": torch.float32, "F16": torch.float16}.get(kind.name, torch.uint8)
        data = torch.frombuffer(buffer, dtype=dtype).reshape(shape)
        return data if kind.name in ("F32", "F16") else GGUFParameter(data, quant_type=kind)

    def close(self) -> None:
        self._tensors.clear()


def component_file(
    folder: Path,
    kwargs: dict[str, Any],
    quantize: list[str],
    *,
    progress: bool = False,
    types: dict[str, str] | None = None,
) -> Path:
    """The GGUF file for a component: the user's `gguf_file`, else quantkit's cached one (written if absent)."""
    from .gguf import GGUF

    r = GGUF.resolved(kwargs)
    if r["gguf_file"]:
        path = user_path(r["gguf_file"], "gguf_file")
        if path.is_dir():
            raise IsADirectoryError(f"gguf_file={r['gguf_file']!r} is a folder; pass the .gguf file itself.")
        read_gguf(path)  # not ours: what is wrong with it is reported with its path, never rewritten
        return path
    where = cache_dir()
    path = where / f"{folder.name}-{r['quant_type']}-{cache_key(folder, r['quant_type'], quantize)}.gguf"
    try:
        remove_stale_temps(where)
        if path.is_file():
            problem = cache_problem(path, folder)
            if problem is None:
                return path
            warnings.warn(f"Rewriting the cached GGUF file {path}: {problem}.", stacklevel=2)
        write_gguf(folder, path, r["quant_type"], quantize, progress=progress, types=types)
    except PermissionError as err:
        raise PermissionError(
            f"Cannot write the GGUF cache in {where} ({err.strerror}); set QUANTKIT_CACHE to a folder you can write "
            "to, or pass gguf_file= a file written before."
        ) from None
    return path


__all__ = [
    "MIXES",
    "GGUFSource",
    "pack",
    "cache_dir",
    "cache_problem",
    "check_matches",
    "component_file",
    "file_digest",
    "gguf_shapes",
    "quantize_tensor",
    "read_gguf",
    "record_path",
    "remove_stale_temps",
    "source_digest",
    "write_gguf",
    "write_record",
]
