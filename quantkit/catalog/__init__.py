"""An offline catalog of published pipelines: their small config files, sized without their weights.

Each folder under `pipelines/` holds one published pipeline's public config files, as the hub has them
(`model_index.json`, each model component's `config.json`, `scheduler/scheduler_config.json`; no tokenizers,
no weights). `published_sizes.json` holds, per component, the byte size of the published weight files, the
dtype they are stored in, and where the figure comes from.

With those, a plan needs no download: `meta_headers(folder, component)` builds the component on the meta device
from its config (shapes only, no memory) and lists its tensors the way the saved safetensors file has them, in
the same format as `quantkit.checkpoint.read_headers` — {tensor name: (safetensors dtype code, shape)}.

For a hub id not in the catalog, `remote_headers(repo_id, component)` reads the same thing from the hub using
HTTP range requests for the safetensors headers only (a few hundred KB, never the weights).

    >>> from quantkit.catalog import CATALOG, catalog_folder, meta_headers
    >>> folder = catalog_folder("black-forest-labs/FLUX.1-dev")
    >>> headers = meta_headers(folder, "transformer")     # ~3 s on one CPU core, cached afterwards

`import quantkit.catalog` is light: the model classes (torch, diffusers, transformers) load only inside
`meta_headers`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from ..errors import did_you_mean, one_of

HERE = Path(__file__).parent
PIPELINES = HERE / "pipelines"
SIZES_FILE = HERE / "published_sizes.json"
MODEL_LIBRARIES = ("diffusers", "transformers")

# torch dtype name (as configs and published_sizes.json spell it) -> safetensors dtype code
DTYPE_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_CODES_TORCH = {v: k for k, v in DTYPE_CODES.items()}


def folder_name(hub_id: str) -> str:
    """'black-forest-labs/FLUX.1-dev' -> 'black-forest-labs--FLUX.1-dev' (the hub cache's own spelling)."""
    return hub_id.replace("/", "--")


def _read_catalog() -> tuple[str, ...]:
    return tuple(
        sorted(p.name.replace("--", "/", 1) for p in PIPELINES.iterdir() if (p / "model_index.json").is_file())
    )


CATALOG: tuple[str, ...] = _read_catalog()
"""Hub ids of the published pipelines the catalog describes."""


def catalog_folder(hub_id: str | Path) -> Path | None:
    """The catalog's folder for `hub_id` (matched case-insensitively), or None when the catalog lacks it."""
    text = str(hub_id).strip().rstrip("/")
    for known in CATALOG:
        if known.lower() == text.lower():
            return PIPELINES / folder_name(known)
    return None


def hub_id_of(folder: str | Path) -> str | None:
    """The hub id of a catalog folder (None for any other folder)."""
    folder = Path(folder)
    if folder.parent.resolve() != PIPELINES.resolve():
        return None
    hub_id = folder.name.replace("--", "/", 1)
    return hub_id if hub_id in CATALOG else None


@lru_cache(maxsize=1)
def published_sizes() -> dict:
    """{hub id: {component: {"bytes", "dtype", "source", ...}}} from published_sizes.json (comments dropped)."""
    data = json.loads(SIZES_FILE.read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def published(hub_id: str, component: str) -> dict | None:
    """The published-size entry of one component: bytes (of its weight files), dtype, source; None if unknown."""
    return published_sizes().get(hub_id, {}).get(component)


def model_components(folder: str | Path) -> dict[str, tuple[str, str]]:
    """{component: (library, class name)} of the model components (diffusers / transformers) in model_index.json."""
    index = json.loads((Path(folder) / "model_index.json").read_text())
    out = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        if value[0] in MODEL_LIBRARIES and (Path(folder) / name / "config.json").is_file():
            out[name] = (value[0], value[1])
    return out


def published_dtype(folder: str | Path, component: str) -> str:
    """The torch dtype name the component's weights are published in.

    From published_sizes.json for a catalog folder; otherwise the config's own `torch_dtype`/`dtype`
    (transformers writes it) and bfloat16 where nothing says."""
    hub_id = hub_id_of(folder)
    entry = published(hub_id, component) if hub_id else None
    if entry and entry.get("dtype"):
        return entry["dtype"]
    config = json.loads((Path(folder) / component / "config.json").read_text())
    value = config.get("torch_dtype") or config.get("dtype")
    return value if value in DTYPE_CODES else "bfloat16"


def meta_headers(
    folder: str | Path, component: str, dtype: str | None = None
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensors the component's saved safetensors file has, computed from its config alone.

    The component is built on the meta device (accelerate's `init_empty_weights`: a real module tree, no
    memory) and its `state_dict()` is walked: tensors shared between names (tied embeddings) are listed once,
    under the first name, as `save_pretrained` writes them; floating tensors get the published dtype, integer
    buffers keep theirs.

    Args:
        folder: a pipeline folder with the component's config.json (a catalog folder, or any pipeline folder).
        component: the component's name in model_index.json ("transformer", "text_encoder_2" ...).
        dtype: float dtype to report ("bfloat16", "float16", "float32"); None = the published one.

    Returns:
        {tensor name: (safetensors dtype code such as "BF16", shape)} — the format of
        `quantkit.checkpoint.read_headers`. The build is cached per (folder, component) for the process.

    Raises:
        ValueError: a component that is not a model component of this pipeline.
    """
    folder = Path(folder)
    models = model_components(folder)
    if component not in models:
        raise ValueError(
            f"{component!r} is not a model component of the pipeline in {folder}.{did_you_mean(component, models)} "
            f"Its model components: {one_of(models)}."
        )
    dtype = dtype or published_dtype(folder, component)
    if dtype not in DTYPE_CODES:
        raise ValueError(f"dtype={dtype!r} is not supported: use one of {one_of(DTYPE_CODES)}.")
    code = DTYPE_CODES[dtype]
    tensors, _, _ = _meta_build(str(folder.resolve()), component)
    return {name: (code if int_code is None else int_code, shape) for name, int_code, shape in tensors}


def meta_linears(folder: str | Path, component: str) -> tuple[list[tuple[str, int, int]], list[str]]:
    """([(Linear module name, out_features, in_features)], the model's `_keep_in_fp32_modules`), from the config.

    What a plan needs to decide which layers a backend quantizes; from the same cached meta-device build as
    `meta_headers`.
    """
    folder = Path(folder)
    if component not in model_components(folder):
        meta_headers(folder, component)  # raises the ValueError naming the components
    _, linears, keep = _meta_build(str(folder.resolve()), component)
    return [tuple(x) for x in linears], list(keep)


@lru_cache(maxsize=64)
def _meta_build(folder: str, component: str):
    """One meta-device build of a component, summarized: (tensors as (name, int dtype code or None for floats,
    shape), Linear layers as (name, out, in), _keep_in_fp32_modules). Cached for the process."""
    import torch

    library, class_name = model_components(Path(folder))[component]
    model = meta_model(library, class_name, Path(folder) / component)
    state = model.state_dict(keep_vars=True)
    tied = _tied_names(model, state)
    seen: set[int] = set()
    tensors = []
    for name, tensor in state.items():
        if id(tensor) in seen or name in tied:  # a tied weight (T5's encoder.embed_tokens is `shared`): saved once
            continue
        seen.add(id(tensor))
        int_code = None if tensor.is_floating_point() else _int_code(tensor.dtype)
        tensors.append((name, int_code, tuple(int(s) for s in tensor.shape)))
    linears = tuple(
        (n, m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    )
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    del model, state
    return tuple(tensors), linears, keep


def _tied_names(model, state: dict) -> set[str]:
    """State-dict names that are tied to another name and so are not saved (transformers' tied-weights mapping).

    Needed besides the object identity check: accelerate's `init_empty_weights` re-creates each Parameter on the
    meta device as it is registered, so a weight tied by assignment in `__init__` (T5's `encoder.embed_tokens`
    = `shared`) becomes a second object there."""
    expand = getattr(model, "get_expanded_tied_weights_keys", None)
    if expand is None:
        return set()
    try:
        mapping = expand(all_submodels=True)
    except TypeError:
        mapping = expand()
    return {target for target, source in dict(mapping).items() if target in state and source in state}


def meta_model(library: str, class_name: str, folder: Path):
    """The component's model built on the meta device from its config.json (`quantkit.planning.sources.meta_model`),
    quietly: published configs carry keys that the current classes only note as deprecated."""
    import warnings

    from ..planning.sources import meta_model as build

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(library, class_name, Path(folder))


def _int_code(torch_dtype) -> str:
    from ..dtypes import SAFETENSORS

    name = str(torch_dtype).removeprefix("torch.")
    for code, (torch_name, _) in SAFETENSORS.items():
        if torch_name == name:
            return code
    raise ValueError(f"No safetensors dtype code for {torch_dtype}.")


def header_bytes(headers: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    """Bytes the tensors of a header dict take (what the weight files hold, less their JSON headers)."""
    from ..checkpoint import numel
    from ..dtypes import code_bytes

    return sum(numel(shape) * code_bytes(code) for code, shape in headers.values())


# -- hub ids outside the catalog ------------------------------------------------------------------

WEIGHT_STEMS = ("diffusion_pytorch_model", "model")
CONFIG_FILES = ("model_index.json",)

Fetch = Callable[[str, str], bytes]
"""fetch(repo_id, filename) -> the file's bytes (small files only: configs and index files)."""
ReadHeader = Callable[[str, str], dict]
"""read_header(repo_id, filename) -> {tensor name: (dtype code, shape)} from one safetensors file's header."""


def _hub_call(call, repo_id: str, filename: str):
    """Run one huggingface_hub call; a file the hub says does not exist becomes FileNotFoundError, any other failure
    (offline, no network, gated, no such repo) an OSError that is *not* a FileNotFoundError."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    try:
        return call()
    except RemoteEntryNotFoundError:
        raise FileNotFoundError(f"{repo_id}/{filename}") from None
    except LocalEntryNotFoundError as err:  # offline mode, or the hub unreachable: not a missing file
        raise ConnectionError(str(err)) from None


def _hub_fetch(repo_id: str, filename: str) -> bytes:
    from huggingface_hub import hf_hub_download

    return Path(_hub_call(lambda: hf_hub_download(repo_id, filename), repo_id, filename)).read_bytes()


def _hub_read_header(repo_id: str, filename: str) -> dict:
    """One safetensors header over HTTP range requests (huggingface_hub reads the first 100 KB, more if needed)."""
    from huggingface_hub import HfApi

    meta = _hub_call(lambda: HfApi().parse_safetensors_file_metadata(repo_id, filename), repo_id, filename)
    return {name: (info.dtype, tuple(info.shape)) for name, info in meta.tensors.items()}


def remote_headers(
    repo_id: str,
    component: str,
    *,
    fetch: Fetch | None = None,
    read_header: ReadHeader | None = None,
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """A hub component's tensors from its safetensors headers, without downloading any weights.

    Reads `{component}/{stem}.safetensors.index.json` (a small JSON file) to find the shards, or takes the single
    `{component}/{stem}.safetensors` when there is no index, then reads each shard's header with HTTP range
    requests (huggingface_hub's `parse_safetensors_file_metadata`): a few hundred KB in all.

    Args:
        repo_id: "org/name" on the Hugging Face hub.
        component: the component folder, e.g. "transformer".
        fetch, read_header: replacements for the two network calls (tests use fakes). Both raise
            FileNotFoundError for a file the repo does not have and another OSError when the hub cannot answer.

    Returns:
        {tensor name: (safetensors dtype code, shape)}, as `quantkit.checkpoint.read_headers` gives.

    Raises:
        OSError: the hub cannot be reached (or the repo is gated or absent), or the component has no safetensors
            weights — naming the repo and the offline way round.
    """
    fetch = fetch or _hub_fetch
    read_header = read_header or _hub_read_header
    where = f"{repo_id!r} (component {component!r})"
    tried = []
    try:
        for stem in WEIGHT_STEMS:
            index_name = f"{component}/{stem}.safetensors.index.json"
            tried.append(index_name)
            try:
                index = json.loads(fetch(repo_id, index_name))
            except FileNotFoundError:
                index = None
            if index is not None:
                out: dict[str, tuple[str, tuple[int, ...]]] = {}
                for shard in sorted(set(index["weight_map"].values())):
                    out.update(read_header(repo_id, f"{component}/{shard}"))
                return out
            single = f"{component}/{stem}.safetensors"
            tried.append(single)
            try:
                return dict(read_header(repo_id, single))
            except FileNotFoundError:
                continue
    except FileNotFoundError as err:  # a shard the index names is missing
        raise OSError(f"{where}: the hub's index names a shard that does not exist ({err}).") from None
    except Exception as err:  # offline, HTTP errors, a broken index ...
        raise OSError(_offline_message(repo_id, where, err)) from None
    raise OSError(
        f"{where} has no safetensors weights on the hub (looked for {', '.join(tried)}). quantkit reads "
        "safetensors only; pass a local pipeline folder saved with save_pretrained(safe_serialization=True)."
    )


def remote_configs(repo_id: str, destination: str | Path, *, fetch: Fetch | None = None) -> Path:
    """Copy a hub pipeline's small config files (model_index.json, each component's config) into `destination`.

    The result is a folder `meta_headers` can size, like a catalog folder. Only JSON configs are fetched.

    Raises:
        OSError: as `remote_headers`.
    """
    fetch = fetch or _hub_fetch
    destination = Path(destination)
    try:
        index_bytes = fetch(repo_id, "model_index.json")
        index = json.loads(index_bytes)
        (destination).mkdir(parents=True, exist_ok=True)
        (destination / "model_index.json").write_bytes(index_bytes)
        for name, value in index.items():
            if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[0] is None:
                continue
            filename = "scheduler_config.json" if name == "scheduler" else "config.json"
            if value[0] not in MODEL_LIBRARIES and name != "scheduler":
                continue
            try:
                data = fetch(repo_id, f"{name}/{filename}")
            except FileNotFoundError:
                continue
            (destination / name).mkdir(exist_ok=True)
            (destination / name / filename).write_bytes(data)
        (destination / ".quantkit-remote").write_text(repo_id)  # marks a configs-only folder of this repo
    except Exception as err:
        raise OSError(_offline_message(repo_id, repr(repo_id), err)) from None
    return destination


def _offline_message(repo_id: str, where: str, err: Exception) -> str:
    catalog = f" The offline catalog has: {one_of(CATALOG)}.{did_you_mean(repo_id, CATALOG)}" if CATALOG else ""
    return (
        f"Could not read {where} from the Hugging Face hub ({type(err).__name__}: {err}). Without network access, "
        "plan a pipeline from the offline catalog or a local folder: pass a catalog id, or download the configs "
        f"and weights elsewhere (huggingface-cli download {repo_id} --include '*.json' '*.safetensors') and pass "
        f"that folder; gated repos need `huggingface-cli login` first.{catalog}"
    )


__all__ = [
    "CATALOG",
    "catalog_folder",
    "header_bytes",
    "hub_id_of",
    "meta_headers",
    "meta_linears",
    "model_components",
    "published",
    "published_dtype",
    "published_sizes",
    "remote_configs",
    "remote_headers",
]
