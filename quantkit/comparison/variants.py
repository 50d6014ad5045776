"""The variants a comparison runs: the default catalogue, reading them from a file, and their names.

`default_variants(source)` is the standard comparison: the baseline and all five backends, on the
components `quantkit.planning.roles.default_components` names (the denoiser and the T5 encoders).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import PipelineQuantizationConfig
from ..load.offload import COMPILE_MODES, OFFLOAD_MODES
from ..models.scenes import DEMO_PROMPTS

# Prompts of the scenes language the embedded pipeline was trained on (quantkit.models.scenes), the ones its
# model card lists as examples.
DEFAULT_PROMPTS = DEMO_PROMPTS
DEFAULT_SEEDS = (0, 1)


RUN_KEYS = ("offload", "compile")  # what a variant adds to its config's dict: how the pipeline runs


@dataclass(frozen=True)
class QuantVariant:
    """A variant that also says how the loaded pipeline runs: a config (None: unquantized) with an offload mode
    and a compile mode (see `quantkit.load.offload`). Both need CUDA; `check_variants` refuses them on a machine
    without it, before anything runs. The record's `config` is the config's dict plus "offload" / "compile".

    Attributes:
        config: a PipelineQuantizationConfig, or None for the unquantized pipeline run this way.
        offload: None, "model", "sequential" or "group".
        compile: None, "regional" (compile_repeated_blocks where the model has it) or "full"; True = "regional".
    """

    config: PipelineQuantizationConfig | None = None
    offload: str | None = None
    compile: str | bool | None = None

    def __post_init__(self):
        if self.config is not None and not isinstance(self.config, PipelineQuantizationConfig):
            raise TypeError(
                f"QuantVariant.config must be a PipelineQuantizationConfig or None, got {type(self.config).__name__}."
            )
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload={self.offload!r} is not an offload mode; use one of {list(OFFLOAD_MODES)}.")
        compile = {True: "regional", False: None}.get(self.compile, self.compile)
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile={self.compile!r} is not a compile mode; use one of {list(COMPILE_MODES)}.")
        object.__setattr__(self, "compile", compile)

    def to_dict(self) -> dict:
        out = self.config.to_dict() if self.config is not None else {}
        out.update({k: getattr(self, k) for k in RUN_KEYS if getattr(self, k) is not None})
        return out

    @classmethod
    def from_dict(cls, data: dict) -> QuantVariant:
        data = dict(data)
        run = {k: data.pop(k) for k in RUN_KEYS if k in data}
        return cls(PipelineQuantizationConfig.from_dict(data) if data else None, **run)


def split_config(data: dict | None) -> tuple[dict | None, str | None, str | None]:
    """A record's or job's config dict as (PipelineQuantizationConfig dict or None, offload, compile)."""
    if data is None:
        return None, None, None
    data = dict(data)
    offload, compile = data.pop("offload", None), data.pop("compile", None)
    return (data or None), offload, compile


def default_variants(source=None) -> dict[str, PipelineQuantizationConfig | None]:
    """The standard comparison: the baseline and all five backends, on the denoiser and the T5 encoder.

    As in diffusers' example (`components_to_quantize=["transformer", "text_encoder_2"]` on FLUX): the
    denoiser ("transformer" or "unet") and every T5 encoder are quantized; CLIP and the VAE stay as they are.
    Each backend at one common setting (quanto int8; its int4 and int2 are a `quant_kwargs` change away).
    """
    from ..planning.roles import default_components
    from ..planning.sources import read_model_index, resolve_source

    _, index = read_model_index(resolve_source(source))
    components = default_components(index)
    if not components:
        raise ValueError(
            f"This pipeline has no transformer, unet or T5 encoder; its components are {sorted(index)}."
            " Pass variants with components_to_quantize naming the ones to quantize."
        )

    def cfg(backend: str, **kwargs) -> PipelineQuantizationConfig:
        return PipelineQuantizationConfig(
            quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=components
        )

    return {
        "baseline": None,
        "bnb-nf4": cfg("bitsandbytes_4bit", bnb_4bit_quant_type="nf4"),
        "bnb-int8": cfg("bitsandbytes_8bit", llm_int8_threshold=6.0),
        "quanto-int8": cfg("quanto", weights_dtype="int8"),
        "torchao-int8wo": cfg("torchao", quant_type="int8wo"),
        "gguf-Q8_0": cfg("gguf", quant_type="Q8_0"),
        "gguf-Q4_0": cfg("gguf", quant_type="Q4_0"),
    }


def variants_to_dict(variants: dict) -> dict[str, dict | None]:
    """{name: config.to_dict() or None}: the JSON form `read_variants` reads back."""
    return {name: (None if c is None else c.to_dict()) for name, c in variants.items()}


def read_variants(path: str | Path) -> dict[str, PipelineQuantizationConfig | None]:
    """Variants from a JSON file (or YAML, when PyYAML is installed): {name: PipelineQuantizationConfig dict or null}.

    Raises:
        ValueError: the file is not a mapping of names to config dicts, or a config is invalid (names it).
    """
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError(
                f"{path} is YAML, which needs PyYAML: pip install 'pyyaml', or write the variants as JSON."
            ) from None
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path} is not valid JSON ({err}). Expected {{name: config dict or null}}, e.g. "
                '{"baseline": null, "quanto-int8": {"quant_backend": "quanto", "quant_kwargs": '
                '{"weights_dtype": "int8"}, "components_to_quantize": ["transformer"]}}.'
            ) from None
    if not isinstance(data, dict) or not data:
        raise ValueError(
            f"{path} must hold a non-empty mapping {{name: config dict or null}}, got {type(data).__name__}."
        )
    out = {}
    for name, value in data.items():
        if value is None:
            out[str(name)] = None
            continue
        if not isinstance(value, dict):
            raise ValueError(f"Variant {name!r} in {path} must be a config dict or null, got {type(value).__name__}.")
        try:
            out[str(name)] = (
                QuantVariant.from_dict(value)
                if set(RUN_KEYS) & set(value)
                else PipelineQuantizationConfig.from_dict(value)
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"Variant {name!r} in {path}: {err}") from None
    return out


def slug(name: str) -> str:
    """A folder name for a variant: letters, digits, '.', '_' and '-' kept, anything else becomes '-'."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-.")
    return s or "variant"


def config_key(config: dict | None) -> str:
    return json.dumps(config, sort_keys=True)


def config_dict(config: PipelineQuantizationConfig | QuantVariant | None) -> dict | None:
    """The JSON form of a variant's config as it is stored in a record (None for the baseline; a QuantVariant's
    offload and compile modes as extra keys)."""
    from .store import jsonable

    return None if config is None else json.loads(json.dumps(jsonable(config.to_dict())))


def check_variants(variants) -> dict[str, PipelineQuantizationConfig | None]:
    if not isinstance(variants, dict) or not variants:
        raise ValueError(
            "variants must be a non-empty dict {name: PipelineQuantizationConfig or None}, e.g. "
            "{'baseline': None, 'quanto-int8': PipelineQuantizationConfig(quant_backend='quanto', "
            "quant_kwargs={'weights_dtype': 'int8'})}."
        )
    out: dict[str, PipelineQuantizationConfig | QuantVariant | None] = {}
    for name, config in variants.items():
        if isinstance(config, dict):
            config = (
                QuantVariant.from_dict(config)
                if set(RUN_KEYS) & set(config)
                else PipelineQuantizationConfig.from_dict(config)
            )
        if isinstance(config, QuantVariant) and config.offload is None and config.compile is None:
            config = config.config  # nothing beyond the config: the plain variant (or the baseline)
        if config is not None and not isinstance(config, PipelineQuantizationConfig | QuantVariant):
            raise TypeError(
                f"Variant {name!r} is a {type(config).__name__}; use a quantkit "
                "PipelineQuantizationConfig (or its dict form), a QuantVariant, or None for the baseline."
            )
        out[str(name)] = config
    _check_run_modes(out)
    slugs: dict[str, str] = {}
    for name in out:
        s = slug(name)
        if s in slugs:
            raise ValueError(f"Variant names {slugs[s]!r} and {name!r} map to the same folder name {s!r}; rename one.")
        slugs[s] = name
    baseline = [n for n, c in out.items() if c is None]
    if not baseline:
        if "baseline" in out:
            raise ValueError(
                "No variant is the unquantized baseline (config None), and the name 'baseline' is "
                "taken; add one, e.g. {'bf16': None, ...}."
            )
        out = {"baseline": None, **out}
    else:  # the reference runs first
        out = {baseline[0]: None, **{n: c for n, c in out.items() if n != baseline[0]}}
    return out


def _check_run_modes(variants: dict) -> None:
    """Offload and compile variants need CUDA: refuse them on a machine without it, before anything runs."""
    needing = [
        f"{n!r} ({', '.join(f'{k}={getattr(v, k)!r}' for k in RUN_KEYS if getattr(v, k) is not None)})"
        for n, v in variants.items()
        if isinstance(v, QuantVariant)
    ]
    if not needing:
        return
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            f"Variants {', '.join(needing)} need a CUDA GPU (offloading moves weights from the CPU to "
            "a GPU; quantkit compiles on CUDA only), and this machine has none. Leave them out here, "
            "or run the comparison on a CUDA machine."
        )


__all__ = [
    "DEFAULT_PROMPTS",
    "DEFAULT_SEEDS",
    "RUN_KEYS",
    "QuantVariant",
    "check_variants",
    "config_dict",
    "config_key",
    "default_variants",
    "read_variants",
    "slug",
    "split_config",
    "variants_to_dict",
]
