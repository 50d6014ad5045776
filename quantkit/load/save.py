"""`save_pipeline`: write a quantized pipeline to a folder that reloads quantized, in the library's format where
one exists.

Per quantized component, the first format that can express it:

1. the library's own format (`format="native"`, the default): the component's `save_pretrained` (config.json with
   its `quantization_config`, the library's weight files). diffusers alone reloads it
   (`DiffusionPipeline.from_pretrained(folder)`; bitsandbytes only on a GPU, since diffusers' bitsandbytes loader
   refuses to run without one), and so does `quantkit.load_pipeline(folder)`, on CPU too. Covers bitsandbytes
   4/8-bit, torchao and quanto on diffusers components; bitsandbytes and torchao on transformers components.
2. the backend's own file where the library has no saved format: GGUF components of diffusers become
   `<component>/diffusion_pytorch_model.gguf` (+ config.json and `quantkit_quantization.json`), which
   `Model.from_single_file(path, quantization_config=GGUFQuantizationConfig(...), config=folder,
   subfolder=component)` and `quantkit.load_pipeline(folder)` load.
3. quantkit's own format for what neither can express: `quantkit_quantization.json` (backend, options, per layer
   what the backend needs) and `quantkit_weights.safetensors` (plain tensors), which only `quantkit.load_pipeline`
   reads. Used for quanto and GGUF on transformers components (transformers cannot save quanto models and keeps
   no GGUF ones), and for layer sets a library's `modules_to_not_convert` cannot name. `format="quantkit"` writes
   it for every quantized component.

Unquantized components are saved by their own `save_pretrained`. `quantkit.load.restore` reads all three formats.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..config import QuantSpec

SAVED_CONFIG = "quantkit_quantization.json"
SAVED_WEIGHTS = "quantkit_weights.safetensors"
FORMATS = ("native", "quantkit")


def save_pipeline(
    pipe,
    folder: str | Path,
    *,
    format: str = "native",
    push_to_hub: bool = False,
    repo_id: str | None = None,
    private: bool | None = None,
    token: str | None = None,
) -> Path:
    """Save a pipeline loaded by quantkit so that `load_pipeline(folder)` reloads it quantized (and, where the
    library can express it, `DiffusionPipeline.from_pretrained(folder)` too; see the module docstring).

    The folder is written under a temporary name and renamed at the end, so a failure leaves no half-written folder.

    Args:
        pipe: a pipeline from `quantkit.load_pipeline`.
        folder: a new (or empty) folder.
        format: "native" (the library's format wherever it exists) or "quantkit" (quantkit's own format for every
            quantized component).
        push_to_hub: upload the folder to the Hugging Face hub afterwards (`repo_id`, default: the folder name).
        repo_id, private, token: passed to `huggingface_hub.create_repo` / `upload_folder`.

    Returns:
        The folder.

    Raises:
        FileExistsError: the folder exists and is not empty.
        ValueError: an unknown format, or LoRA adapters still loaded (fuse and unload them, or unload them, first).
    """
    from safetensors.torch import save_file

    from ..planning.checks import check_pipeline_object, check_save_target

    if format not in FORMATS:
        raise ValueError(f"format={format!r}: use 'native' (the library's format where it exists) or 'quantkit'.")
    check_pipeline_object(pipe, "save_pipeline()")
    _check_no_adapters(pipe)
    folder = check_save_target(folder)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        pipe.save_config(tmp)
        for name, component in pipe.components.items():
            if component is None:
                continue
            record = getattr(component, "quantkit", None)
            if record is None:
                component.save_pretrained(tmp / name)
                continue
            adapter = QuantSpec(record["backend"], **record["kwargs"]).adapter
            library = record.get("library") or _library(component)
            if format == "native" and "native" in record and record["native"] is None:
                component.save_pretrained(tmp / name)  # the library's own format
                continue
            (tmp / name).mkdir()
            _save_model_config(component, tmp / name)
            path = adapter.save_native_file(component, tmp / name, library) if format == "native" else None
            if path is not None:
                info = {
                    "format": 2,
                    "quant": _spec(record, component).to_dict(),
                    "file": path.name,
                    "layers": list(record["layers"]),
                    "dtype": _float_dtype(component),
                }
            else:
                tensors, info = component_state(component, record)
                save_file(tensors, str(tmp / name / SAVED_WEIGHTS))
            (tmp / name / SAVED_CONFIG).write_text(json.dumps(info, indent=1))
        if getattr(pipe, "generation_defaults", None):
            from ..models.defaults import write_generation_defaults

            write_generation_defaults(tmp, pipe.generation_defaults)
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if push_to_hub:
        _push(folder, repo_id or folder.name, private, token)
    return folder


def _check_no_adapters(pipe) -> None:
    for name, component in pipe.components.items():
        if getattr(component, "peft_config", None):
            raise ValueError(
                f"{name!r} has LoRA adapters loaded ({', '.join(component.peft_config)}); saving would write them as "
                "layers of the model. Call pipe.unload_lora_weights() first (after pipe.fuse_lora() to keep the LoRA "
                "merged into the weights), or save the adapters with pipe.save_lora_weights()."
            )


def _push(folder: Path, repo_id: str, private: bool | None, token: str | None) -> None:
    """Upload a saved folder to the hub (a real path; quantkit's tests run offline and do not exercise it)."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(repo_id, exist_ok=True, private=private, token=token).repo_id
    upload_folder(repo_id=repo_id, folder_path=str(folder), token=token, commit_message="Upload quantized pipeline")


def _library(model) -> str:
    return "diffusers" if hasattr(model, "save_config") else "transformers"


def _save_model_config(model, folder: Path) -> None:
    """The component's config without a quantization_config: the backend's file or quantkit's files say how it is
    quantized (a quantization_config would send the library's own loader to files that are not there)."""
    if hasattr(model, "save_config"):  # diffusers
        native = model.config.get("quantization_config")
        if native is not None:  # GGUFQuantizationConfig holds a torch dtype, which its to_dict leaves as it is
            model.register_to_config(quantization_config={})
        try:
            model.save_config(folder)
        finally:
            if native is not None:
                model.register_to_config(quantization_config=native)
        path = folder / "config.json"
        data = json.loads(path.read_text())
        data.pop("quantization_config", None)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:  # transformers
        config = model.config
        native = getattr(config, "quantization_config", None)
        if native is not None:
            del config.quantization_config
        try:
            config.save_pretrained(folder)
        finally:
            if native is not None:
                config.quantization_config = native


def _float_dtype(model) -> str | None:
    floats = [t.dtype for t in model.parameters() if t.is_floating_point() and not hasattr(t, "quant_type")]
    return str(max(set(floats), key=floats.count)).removeprefix("torch.") if floats else None


def _spec(record: dict, model) -> QuantSpec:
    """The record's spec with the compute dtype the layers run in (so a reload computes the same way)."""
    kwargs = dict(record["kwargs"])
    compute = next((m.compute_dtype for m in model.modules() if getattr(m, "compute_dtype", None) is not None), None)
    spec = QuantSpec(record["backend"], **kwargs)
    if compute is not None and "compute_dtype" in spec.adapter.options:
        kwargs["compute_dtype"] = compute
        kwargs.pop("gguf_file", None)
        spec = QuantSpec(record["backend"], **kwargs)
    return spec


def component_state(model, record: dict) -> tuple[dict, dict]:
    """(plain tensors, JSON info) that restore a quantized model in quantkit's own format."""
    from ..backends import get_backend

    adapter = get_backend(record["backend"])
    layers = set(record["layers"])
    modules = dict(model.named_modules())
    tensors, per_layer, seen = {}, {}, set()
    for layer in record["layers"]:
        state, meta = adapter.linear_state(modules[layer])
        per_layer[layer] = meta
        for k, v in state.items():
            tensors[f"{layer}.{k}"] = v.detach().contiguous()
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        owner = name.rpartition(".")[0]
        if owner in layers or name in seen:
            continue
        seen.add(name)
        tensors[name] = t.detach().contiguous()
    tensors = _unshare(tensors)
    spec = QuantSpec(record["backend"], **record["kwargs"])
    return tensors, {"format": 1, "quant": spec.to_dict(), "layers": per_layer}


def _unshare(tensors: dict) -> dict:
    """safetensors refuses tensors that share memory: keep the first name of each, drop the aliases
    (tie_weights restores them on load)."""
    out, ptrs = {}, set()
    for k, v in tensors.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.device.type != "meta" else k
        if key in ptrs:
            continue
        ptrs.add(key)
        out[k] = v
    return out


__all__ = ["FORMATS", "SAVED_CONFIG", "SAVED_WEIGHTS", "component_state", "save_pipeline"]
