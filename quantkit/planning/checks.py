"""Checks of what is on disk, made before any weight is read: each broken input explained with its path.

- `check_components(folder, index)`: every component model_index.json lists has its folder, readable JSON files,
  and (for a model) weights;
- `check_weight_files(folder)`: every safetensors file of a component is whole (the file is as long as its header
  says, every tensor's byte range fits its shape and dtype), so a truncated download or copy is caught here and not
  as a `SafetensorError` without a path in the middle of a load;
- `check_saved_component(folder)`: a component folder written by `quantkit.save_pipeline`: its
  `quantkit_quantization.json` and weights file, what restoring needs;
- `check_classes(pipeline_class, index)`: the pipeline's and its components' classes exist in the installed libraries;
- `check_pipeline_object(obj, purpose)`, `check_save_target(folder)`: what `footprint` and `save_pipeline` are given;
- `check_skip_names(...)`: every name in `modules_to_not_convert` names a module of the component, with the nearest
  names suggested (a name that matches nothing would otherwise keep nothing in full precision, silently).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from ..checkpoint import numel, parse_header, weight_files
from ..dtypes import code_info
from ..errors import user_path

# files that mark a component folder as something other than a model (tokenizer, scheduler, image processor)
NOT_A_MODEL = ("tokenizer_config.json", "scheduler_config.json", "preprocessor_config.json")
SAVED_CONFIG = "quantkit_quantization.json"  # what quantkit.save_pipeline writes beside a quantized component
SAVED_WEIGHTS = "quantkit_weights.safetensors"


def check_components(folder: Path, index: dict[str, tuple[str, str]]) -> None:
    """Every component in `index` has its folder, its JSON files parse, and a model has weights.

    Raises:
        FileNotFoundError: a component folder, or a model's weights, missing (naming the path and what is there).
        NotADirectoryError: a component "folder" that is a file.
        ValueError: a JSON file that does not parse (naming it).
    """
    for name, (library, class_name) in index.items():
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(
                f"model_index.json lists the component {name!r} ({library}.{class_name}), but {path} is missing. "
                "Copy that folder from the original pipeline, or save the pipeline again with save_pretrained()."
            )
        if not path.is_dir():
            raise NotADirectoryError(
                f"{path} is a file, but model_index.json lists {name!r} ({class_name}) as a component folder. "
                "Copy the folder from the original pipeline, or save the pipeline again."
            )
        for file in sorted(path.glob("*.json")):
            _check_json(file, f"the {name!r} component ({class_name})")
        if (path / SAVED_CONFIG).is_file() and not (path / SAVED_WEIGHTS).is_file() and not any(path.glob("*.gguf")):
            raise FileNotFoundError(
                f"{path / SAVED_WEIGHTS} is missing; {path / SAVED_CONFIG} describes a quantized component whose "
                "tensors are in that file. Copy it from where the pipeline was saved, or save the pipeline again."
            )
        if _expects_weights(path, library) and not _has_weights(path):
            found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
            raise FileNotFoundError(
                f"{path} has a config.json but no weights (found: {found}); the {class_name} needs "
                "diffusion_pytorch_model.safetensors or model.safetensors (or sharded ones with their "
                ".safetensors.index.json). Copy the weights from the original pipeline, or save it again."
            )


_CHECKED: set[tuple[str, int, int]] = set()  # (path, size, mtime) of JSON files found good in this process


def _check_json(file: Path, what: str) -> None:
    """`file` parses as JSON (a config or index file: as an object). A file found good once is not parsed again
    while its size and mtime stay the same (a T5 tokenizer.json is 2 MB; the widgets plan at every click)."""
    st = file.stat()
    key = (str(file), st.st_size, st.st_mtime_ns)
    if key in _CHECKED:
        return
    try:
        data = json.loads(file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{file} is not valid JSON ({err}); {what} needs it. Restore the file from the original pipeline, "
            "or save the pipeline again."
        ) from None
    except OSError as err:
        raise PermissionError(f"Cannot read {file} ({err.strerror}); {what} needs it.") from None
    if (file.name.endswith("config.json") or file.name.endswith(".index.json")) and not isinstance(data, dict):
        raise ValueError(
            f"{file} holds a JSON {type(data).__name__}, not an object; {what} needs a JSON object there. "
            "Restore the file from the original pipeline."
        )
    _CHECKED.add(key)


def _expects_weights(path: Path, library: str) -> bool:
    """A diffusers/transformers component folder with a model config (not a tokenizer, scheduler or processor)."""
    return (
        library in ("diffusers", "transformers")
        and (path / "config.json").is_file()
        and not any((path / marker).is_file() for marker in NOT_A_MODEL)
    )


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")) or any(folder.glob("*.gguf"))


def check_weight_files(folder: Path) -> None:
    """Every safetensors file of a component is whole: as long as its header says, each tensor's bytes in range.

    Raises:
        FileNotFoundError: no safetensors weights, or a shard the index names is missing.
        ValueError: a truncated file or a header whose byte ranges do not fit (naming the file and the tensor).
    """
    for file in weight_files(folder):
        header, start = parse_header(file)
        size = file.stat().st_size
        end_of_data = start
        for name, info in header.items():
            if name == "__metadata__":
                continue
            offsets, shape = info["data_offsets"], info["shape"]
            if (
                not isinstance(offsets, list)
                or len(offsets) != 2
                or not all(_is_count(o) for o in offsets)
                or not isinstance(shape, list)
                or not all(_is_count(s) for s in shape)
                or offsets[1] < offsets[0]
            ):
                raise ValueError(
                    f"{file} has a malformed header entry for tensor {name!r} (shape {shape!r}, data_offsets "
                    f"{offsets!r}). The file is damaged: copy or download it again, or save the component again."
                )
            expected = numel(tuple(shape)) * code_info(info["dtype"], f"{file} (tensor {name!r})")[1]
            if offsets[1] - offsets[0] != expected:
                raise ValueError(
                    f"{file}: tensor {name!r} ({info['dtype']} {shape}) should take {expected} bytes but its header "
                    f"gives it {offsets[1] - offsets[0]}. The file is damaged: copy or download it again."
                )
            end_of_data = max(end_of_data, start + offsets[1])
        if size < end_of_data:
            raise ValueError(
                f"{file} is truncated: its header describes {end_of_data} bytes but the file has {size}. "
                "An interrupted download or copy? Copy or download it again, or save the component again."
            )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_saved_component(folder: Path) -> dict[str, Any]:
    """The contents of `quantkit_quantization.json` in a folder written by `save_pipeline`, once checked.

    Checks that the file is a JSON object with 'quant' (a QuantSpec dict) and 'layers' ({layer: metadata}), that
    the weights file is there and whole, and that every layer it names has tensors in it. `restore_component` can
    then read both without meeting a raw JSONDecodeError, KeyError or SafetensorError.

    Returns:
        The parsed JSON ({'format', 'quant', 'layers'}), with 'spec' added: the QuantSpec.

    Raises:
        FileNotFoundError: the weights file is missing.
        ValueError: a damaged JSON file or weights file, naming it and what it should hold.
    """
    from ..checkpoint import read_header
    from ..config import QuantSpec
    from .sources import read_json

    path = Path(folder) / SAVED_CONFIG
    info = read_json(path, "a component saved by quantkit.save_pipeline")
    gguf_file = any(Path(folder).glob("*.gguf"))  # a GGUF component: its tensors and layers are in the .gguf
    try:
        if not gguf_file and not isinstance(info.get("layers"), dict):
            raise TypeError("'layers' is not a JSON object")
        spec = QuantSpec.from_dict(info["quant"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path} is damaged ({type(err).__name__}: {err}); it should hold {{'quant': {{'backend': ...}}, "
            "'layers': {...}}. Save the pipeline again."
        ) from None
    weights = Path(folder) / SAVED_WEIGHTS
    if gguf_file and not weights.is_file():
        return {**info, "spec": spec}
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights} is missing; {path} describes a quantized component whose tensors are in that file. "
            "Copy it from where the pipeline was saved, or save the pipeline again."
        )
    check_weight_files(folder)
    names = read_header(weights)
    missing = [layer for layer in info["layers"] if not any(k.startswith(f"{layer}.") for k in names)]
    if missing:
        raise ValueError(
            f"{weights} has no tensors for {len(missing)} of the layers {path.name} names (first: {missing[0]!r}); "
            "the two files do not belong together. Save the pipeline again."
        )
    return {**info, "spec": spec}


def check_classes(pipeline_class: str, index: dict[str, tuple[str, str]]) -> None:
    """The pipeline class (diffusers) and every component's class exist here.

    Raises:
        ValueError: a library that is not installed or a class it does not have, naming model_index.json's entry.
    """
    from .sources import model_class

    model_class("diffusers", pipeline_class)
    for library, class_name in dict.fromkeys(index.values()):
        model_class(library, class_name)


def check_skip_names(option: str, names: list[str], modules: dict[str, list[str]]) -> None:
    """Each entry of a skip list (`modules_to_not_convert`) names a module of at least one of the components.

    Args:
        option: the option's name as the backend spells it (for the message).
        names: the entries the user gave.
        modules: {component: its module names (from the meta-device model)}, the components the entries apply to.

    Raises:
        ValueError: an entry that names no module, with the nearest module names.
    """
    from .layers import matches

    every = [m for ms in modules.values() for m in ms if m]
    for entry in names:
        if any(matches(m, [entry]) for m in every):
            continue
        segments = sorted({m.rsplit(".", 1)[-1] for m in every})
        close = difflib.get_close_matches(entry, list(dict.fromkeys([*segments, *every])), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        where = ", ".join(modules)
        raise ValueError(
            f"{option} entry {entry!r} names no module of {where}, so it would keep nothing in full precision.{hint} "
            f"Entries are module names or dotted parts of them (whole segments), e.g. {_examples(every)}; "
            f"list them with [n for n, _ in model.named_modules()]."
        )


def check_pipeline_object(obj: Any, purpose: str) -> dict[str, Any]:
    """The `components` dict of a loaded pipeline, or a TypeError that says what `purpose` takes.

    Args:
        obj: what the user passed (a diffusers pipeline, as load_pipeline returns).
        purpose: the function's name, e.g. "save_pipeline()".
    """
    components = None if isinstance(obj, type) else getattr(obj, "components", None)
    if not isinstance(components, dict):
        text = repr(obj)
        raise TypeError(
            f"{purpose} takes a diffusers pipeline (what quantkit.load_pipeline returns), got {type(obj).__name__} "
            f"{text[:57] + '...' if len(text) > 60 else text}."
        )
    return components


def check_save_target(folder: Any) -> Path:
    """A folder `save_pipeline` can write: a new or empty folder whose parent can be written.

    Raises:
        TypeError: not a str or Path.
        FileExistsError: a folder that is not empty.
        NotADirectoryError: a file.
        PermissionError: a place this process cannot write.
    """
    import os

    if not isinstance(folder, str | os.PathLike) or (isinstance(folder, str) and not folder.strip()):
        raise TypeError(
            f"The folder to save into must be a path (str or Path), got {type(folder).__name__} {folder!r}."
        )
    path = user_path(folder, "folder")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; pass a new folder to save the pipeline into.")
    if path.is_dir() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty; pass a new folder or delete it first.")
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"Cannot write into {parent} (no write permission); pass a folder you can write to.")
    return path


def _examples(names: list[str]) -> str:
    linear_like = [n for n in names if "." in n][:2] + [n for n in names if "." not in n][:1]
    return ", ".join(repr(n) for n in linear_like) or "'proj_out'"


__all__ = [
    "NOT_A_MODEL",
    "SAVED_CONFIG",
    "SAVED_WEIGHTS",
    "check_classes",
    "check_components",
    "check_pipeline_object",
    "check_save_target",
    "check_saved_component",
    "check_skip_names",
    "check_weight_files",
]
