"""Sizes of each component as a peak prediction needs them: bytes as loaded, the largest block, the largest leaf.

`sizes_from_plan(plan)` reads them off a `LoadPlan` (its bytes_after are the true sizes); `MetaSizer` computes
them for any candidate config from configs alone (a catalog id or a local folder), for `fit`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import one_of
from .layers import matches
from .peak import _BLOCK, ComponentSizes
from .roles import role_of

# -- from headers and plans -----------------------------------------------------------------------------------------


def _block_key(name: str) -> str | None:
    m = _BLOCK.match(name)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def sizes_from_headers(
    name: str,
    class_name: str,
    headers: dict[str, tuple[str, tuple[int, ...]]],
    *,
    loaded_bytes: int | None = None,
    fp32_bytes: int = 0,
    backend: str | None = None,
    config: dict | None = None,
    dtype_bytes: int | None = None,
) -> ComponentSizes:
    """ComponentSizes from a component's tensor headers ({name: (dtype code, shape)}).

    Args:
        loaded_bytes: the component's true bytes as loaded (a plan's bytes_after); None = the headers' bytes.
            Block and leaf sizes are scaled by loaded / header bytes (quantization shrinks them alike).
        dtype_bytes: bytes per float element as loaded (None: as stored).
    """
    from ..checkpoint import numel
    from ..dtypes import FLOAT_CODES, code_bytes

    def size(code, shape):
        per = dtype_bytes if dtype_bytes and code in FLOAT_CODES else code_bytes(code)
        return numel(shape) * per

    total = sum(size(c, s) for c, s in headers.values()) or 1
    scale = (loaded_bytes if loaded_bytes is not None else total) / total
    blocks: dict[str, int] = {}
    leaves: dict[str, int] = {}
    largest, widest = 0, 0
    for tensor, (code, shape) in headers.items():
        nbytes = size(code, shape)
        key = _block_key(tensor)
        if key is not None:
            blocks[key] = blocks.get(key, 0) + nbytes
        leaf = tensor.rsplit(".", 1)[0]
        leaves[leaf] = leaves.get(leaf, 0) + nbytes
        if len(shape) == 2 and numel(shape) > largest:
            largest, widest = numel(shape), shape[0]
    inside = sum(blocks.values())
    return ComponentSizes(
        name=name,
        class_name=class_name,
        role=role_of(name, class_name),
        bytes=int(total * scale) if loaded_bytes is None else int(loaded_bytes),
        fp32_bytes=fp32_bytes,
        backend=backend,
        config=dict(config or {}),
        block_bytes=int(max(blocks.values(), default=0) * scale),
        outside_blocks_bytes=int((total - inside) * scale),
        leaf_bytes=int(max(leaves.values(), default=0) * scale),
        largest_weight_elements=largest,
        largest_out_features=widest,
    )


def sizes_from_plan(plan, headers: dict[str, dict] | None = None) -> list[ComponentSizes]:
    """ComponentSizes of every model component of a quantkit LoadPlan (its bytes_after are the true sizes).

    Args:
        plan: a `quantkit.LoadPlan`.
        headers: {component: headers} where the plan's folder has no weight files (a catalog folder: pass
            `quantkit.catalog.meta_headers(folder, name)` for each); read from the folder otherwise.
    """
    from ..checkpoint import read_headers

    out = []
    dtype_bytes = {"float32": 4, "float16": 2, "bfloat16": 2}.get(plan.torch_dtype or "")
    for name, c in plan.components.items():
        if not c.is_model:
            continue
        h = (headers or {}).get(name) or read_headers(c.folder)
        config_path = Path(c.folder) / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        out.append(
            sizes_from_headers(
                name,
                c.class_name,
                h,
                loaded_bytes=c.bytes_after,
                backend=c.spec.backend if c.spec is not None else None,
                config=config,
                dtype_bytes=dtype_bytes,
            )
        )
    return out


# -- sizes from the meta device -----------------------------------------------------------------------


class MetaSizer:
    """candidate -> list[ComponentSizes], from configs alone (no weights read).

    Each model component is built once on the meta device (a catalog id uses `quantkit.catalog`'s configs and
    published dtype; a local folder its own configs and safetensors headers). For a quantized component, every
    Linear layer the backend takes is counted at the backend's `weight_bytes`; the rules are `quantkit.plan`'s:
    the backend's skip list, its `layer_problem` by shape, and `_keep_in_fp32_modules` kept unquantized under
    bitsandbytes and GGUF.

    Args:
        source: a catalog hub id or a local pipeline folder.
        device: the target device ("cuda" or "cpu"; some layers are only quantized on one).
        dtype: the dtype unquantized tensors load in ("bfloat16" ...); None = as published.
        fp32_keep: backends under which `_keep_in_fp32_modules` (T5's `wo`) stay in float32 instead of `dtype` —
            ("bitsandbytes_4bit", "bitsandbytes_8bit") reproduces transformers 4.x, which the blog measured.
    """

    def __init__(
        self,
        source: str | Path,
        *,
        device: str = "cuda",
        dtype: str | None = "bfloat16",
        fp32_keep: tuple[str, ...] = (),
    ):
        from ..catalog import catalog_folder, meta_headers, model_components

        folder = catalog_folder(source)
        self.folder = folder if folder is not None else Path(source)
        if not (self.folder / "model_index.json").is_file():
            raise ValueError(
                f"{source!r} is neither a catalog id nor a pipeline folder (no model_index.json). Catalog ids: "
                f"{one_of(_catalog())}."
            )
        import json

        index = json.loads((self.folder / "model_index.json").read_text())
        self.pipeline_class = index.get("_class_name", "DiffusionPipeline")
        self.device = device
        self.dtype = dtype
        self.fp32_keep = tuple(fp32_keep)
        self.models = model_components(self.folder)
        self.headers = {}
        for name in self.models:
            if folder is None and _has_weights(self.folder / name):
                from ..checkpoint import read_headers

                self.headers[name] = read_headers(self.folder / name)
            else:
                self.headers[name] = meta_headers(self.folder, name)
        self.configs = {n: json.loads((self.folder / n / "config.json").read_text()) for n in self.models}

    def roles(self) -> dict[str, str]:
        return {n: role_of(n, cls) for n, (_, cls) in self.models.items()}

    def _layers(self, name: str) -> tuple[list[tuple[str, int, int]], list[str]]:
        """([(Linear name, out_features, in_features)], the model's _keep_in_fp32_modules), cached by the catalog."""
        from ..catalog import meta_linears

        return meta_linears(self.folder, name)

    def _float_bytes(self, code: str) -> int:
        from ..dtypes import COMPUTE_BYTES, FLOAT_CODES, code_bytes

        if self.dtype and code in FLOAT_CODES:
            return COMPUTE_BYTES[self.dtype]
        return code_bytes(code)

    def component_bytes(self, name: str, spec) -> tuple[int, int]:
        """(bytes as loaded, of which float32 bytes) of one component under `spec` (a QuantSpec or None)."""
        from ..checkpoint import numel
        from ..dtypes import FLOAT_CODES

        headers = self.headers[name]
        total = sum(numel(s) * self._float_bytes(c) for c, s in headers.values())
        fp32 = sum(numel(s) * 4 for c, s in headers.values() if c in FLOAT_CODES and self._float_bytes(c) == 4)
        if spec is None:
            return total, fp32
        adapter = spec.adapter
        layers, keep = self._layers(name)
        skip = list(adapter.skip_modules(spec.kwargs))
        keep_fp32 = spec.backend in self.fp32_keep
        if adapter.keeps_fp32_modules or keep_fp32:  # the same rule as the plan's (Backend.keep_modules)
            skip += keep
        for layer, out_f, in_f in layers:
            code, shape = headers.get(f"{layer}.weight", ("F32", (out_f, in_f)))
            before = numel(shape) * self._float_bytes(code)
            hit = matches(layer, skip)
            if hit:
                if keep_fp32 and matches(layer, keep) and self._float_bytes(code) < 4:
                    total += numel(shape) * (4 - self._float_bytes(code))  # upcast to float32
                    fp32 += numel(shape) * 4
                continue
            if adapter.layer_problem(spec.kwargs, in_f, out_f, self.device, layer):
                continue
            total += adapter.weight_bytes(spec.kwargs, out_f, in_f, self._float_bytes(code), layer) - before
        return total, fp32

    def __call__(self, candidate) -> list[ComponentSizes]:
        """The sizes of every model component under `candidate` (a quantkit.planning.fit.Candidate)."""
        config = candidate.config
        names = list(self.models)
        out = []
        for name, (_, cls) in self.models.items():
            spec = config.spec_for(name, names) if config is not None else None
            loaded, fp32 = self.component_bytes(name, spec)
            out.append(
                sizes_from_headers(
                    name,
                    cls,
                    self.headers[name],
                    loaded_bytes=loaded,
                    fp32_bytes=fp32,
                    backend=spec.backend if spec is not None else None,
                    config=self.configs[name],
                    dtype_bytes={"float32": 4, "float16": 2, "bfloat16": 2}.get(self.dtype or ""),
                )
            )
        return out


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))


def _catalog() -> tuple[str, ...]:
    from ..catalog import CATALOG

    return CATALOG


__all__ = ["MetaSizer", "sizes_from_headers", "sizes_from_plan"]
