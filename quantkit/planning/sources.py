"""Where a pipeline comes from and what its folder holds: the source, model_index.json, model classes.

`resolve_source` turns what the user passed (None, a folder, a hub id) into a local folder;
`read_model_index` lists the components; `meta_model` builds a component on the meta device
(the real module tree, no weights in memory) for the plan and the streaming loader.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from ..errors import user_path
from ..models import EMBEDDED_PIPELINE_DIR

EMBEDDED_PIPELINE = EMBEDDED_PIPELINE_DIR
"""Folder of the tiny FLUX-layout pipeline quantkit ships and uses when no source is given (v2, tiny-flux-scenes)."""

MODEL_LIBRARIES = ("diffusers", "transformers")


def resolve_source(source: str | Path | None, *, weights: bool = True) -> Path:
    """A local pipeline folder for `source`: None = the embedded pipeline; a hub id is downloaded.

    Args:
        source: None, a pipeline folder, or a hub id ("org/name").
        weights: whether the weights are needed. For planning (`weights=False`) a hub id in quantkit's catalog of
            published pipelines resolves to the catalog's folder of config files (nothing is downloaded), and
            another hub id to its config files alone (`quantkit.catalog.remote_configs`; tensor sizes are then
            read from the safetensors headers by range requests).

    Raises:
        TypeError: a source that is not a string, a Path or None.
        ValueError: a folder that is not a pipeline (no model_index.json), an empty string.
        FileNotFoundError: neither a folder nor a hub id.
    """
    if source is not None and not isinstance(source, str | os.PathLike):
        raise TypeError(
            f"source must be a pipeline folder (str or Path), a hub id such as 'black-forest-labs/FLUX.1-dev', or "
            f"None for the embedded pipeline; got {type(source).__name__} {str(source)[:60]!r}."
        )
    if isinstance(source, str) and not source.strip():
        raise ValueError("source='' names no pipeline: pass a folder, a hub id, or None for the embedded pipeline.")
    if source is None:
        if not (EMBEDDED_PIPELINE / "model_index.json").is_file():
            raise FileNotFoundError(
                f"The embedded pipeline is missing from {EMBEDDED_PIPELINE} (a broken install?). Reinstall quantkit "
                "(pip install -e . from the repository), or pass a pipeline folder as the source."
            )
        source = EMBEDDED_PIPELINE
    path = user_path(source, "source")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            hint = (
                " It looks like one component of a pipeline: pass its parent folder."
                if (path / "config.json").is_file() and (path.parent / "model_index.json").is_file()
                else ""
            )
            raise ValueError(
                f"{path} is not a diffusers pipeline folder: it has no model_index.json.{hint} Pass a "
                "folder written by pipeline.save_pretrained(), a hub id such as "
                "'black-forest-labs/FLUX.1-dev', or None for the embedded pipeline."
            )
        return path
    if path.exists():
        raise ValueError(f"{path} is a file, not a pipeline folder. Pass the folder that holds model_index.json.")
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        if not weights:
            from ..catalog import catalog_folder, remote_configs

            folder = catalog_folder(text)
            if folder is not None:
                return folder
            return remote_configs(text, _configs_cache() / text.replace("/", "--"))
        return _download(text)
    raise FileNotFoundError(
        f"Pipeline source {text!r} is neither a folder nor a hub id ('org/name'). "
        "Check the path, or pass None for the embedded pipeline."
    )


def _download(repo_id: str) -> Path:
    """Download a pipeline from the Hugging Face hub (configs, tokenizers and safetensors weights)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=[
                    "*.json",
                    "*.txt",
                    "*.model",
                    "*.safetensors",
                    "*.safetensors.index.json",
                    "*tokenizer*",
                ],
            )
        )
    except Exception as err:
        raise OSError(
            f"Could not get {repo_id!r} from the hub ({type(err).__name__}: {err}). Without network "
            "access, pass a local pipeline folder (or None for the embedded pipeline); gated models need "
            "`huggingface-cli login` first."
        ) from None


def _configs_cache() -> Path:
    import os

    return Path(os.environ.get("QUANTKIT_CACHE", Path.home() / ".cache" / "quantkit")) / "configs"


def weightless(folder: Path) -> str | None:
    """The hub id of a folder that holds a published pipeline's configs but no weights (the catalog's, or
    configs fetched for planning); None for an ordinary pipeline folder."""
    from ..catalog import hub_id_of

    hub_id = hub_id_of(folder)
    if hub_id is not None:
        return hub_id
    marker = Path(folder) / ".quantkit-remote"
    return marker.read_text().strip() if marker.is_file() else None


def component_headers(folder: Path, name: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor: (safetensors dtype code, shape)} of a component: from its safetensors headers, or — in a folder
    without weights — computed from its config on the meta device (catalog) or read by range requests (hub)."""
    from ..checkpoint import read_headers

    hub_id = weightless(folder)
    if hub_id is None:
        return read_headers(Path(folder) / name)
    from ..catalog import hub_id_of, meta_headers, remote_headers

    if hub_id_of(folder) is not None:
        return meta_headers(folder, name)
    return remote_headers(hub_id, name)


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`, or an error that names the file and what it should hold.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: it is not JSON, or not a JSON object.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {what} needs it. Save the pipeline again with save_pretrained().")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {what} needs a JSON object there.") from None
    except OSError as err:
        raise PermissionError(f"Cannot read {path} ({err.strerror}); {what} needs it.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object; {what} needs a JSON object.")
    return data


def read_model_index(folder: Path) -> tuple[str, dict[str, tuple[str, str]]]:
    """(pipeline class name, {component: (library, class name)}) from model_index.json.

    Raises:
        ValueError: a model_index.json that is not a JSON object, lacks `_class_name`, or lists no component.
    """
    path = Path(folder) / "model_index.json"
    index = read_json(path, "a diffusers pipeline folder")
    if not isinstance(index.get("_class_name"), str):
        raise ValueError(
            f"{path} has no '_class_name' (the pipeline class, e.g. 'FluxPipeline'); it was not written by "
            "pipeline.save_pretrained(). Add it, or save the pipeline again."
        )
    components = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[0] is None:
            continue
        if not all(isinstance(v, str) for v in value):
            raise ValueError(f"{path}: component {name!r} is {value!r}; expected [library, class name].")
        components[name] = (value[0], value[1])
    if not components:
        raise ValueError(f"{path} lists no components ([library, class] pairs); save the pipeline again.")
    return index["_class_name"], components


def model_class(library: str, class_name: str):
    """The class `library.class_name` (diffusers, transformers, or another importable library).

    Raises:
        ImportError: the library is not installed (with the pip command; or the entry is misspelt).
        ValueError: not a module name, or the library has no such class (naming the installed version's fix).
    """
    if (
        not isinstance(library, str)
        or not library.isidentifier()
        and not all(part.isidentifier() for part in library.split("."))
    ):
        raise ValueError(
            f"model_index.json names the library {library!r}, which is not a module name; fix the entry "
            "(e.g. ['diffusers', 'AutoencoderKL'])."
        )
    try:
        module = importlib.import_module(library)
    except ImportError:
        raise ImportError(
            f"model_index.json names the library {library!r}, which is not installed. Install it with: pip install "
            f"'{library}' (or fix the entry if it is misspelt).",
            name=library,
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        version = getattr(module, "__version__", "?")
        raise ValueError(
            f"{library} {version} has no class {class_name!r} (named in model_index.json); check the spelling, "
            f"or upgrade {library} (pip install -U '{library}')."
        )
    return cls


def meta_model(library: str, class_name: str, folder: Path):
    """The component's model built on the meta device: real module tree, no weights in memory.

    Raises:
        FileNotFoundError / ValueError: a missing or malformed config.json, naming the file.
    """
    from accelerate import init_empty_weights

    cls = model_class(library, class_name)
    config_path = Path(folder) / "config.json"
    read_json(config_path, f"the {class_name} component")
    try:
        if library == "diffusers":
            config = cls.load_config(folder)
            with init_empty_weights():
                return cls.from_config(config)
        config = cls.config_class.from_pretrained(folder)
        with init_empty_weights():
            return cls(config)
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise ValueError(
            f"{config_path} does not describe a {class_name} ({type(err).__name__}: {err}). Check that the "
            "folder and model_index.json belong together."
        ) from None


__all__ = [
    "EMBEDDED_PIPELINE",
    "MODEL_LIBRARIES",
    "component_headers",
    "meta_model",
    "model_class",
    "read_json",
    "read_model_index",
    "resolve_source",
    "weightless",
]
