"""GGUF mix presets: which block type each tensor of a model gets, in the style of community diffusion GGUFs.

A preset such as "Q4_K_M" is not one type for every tensor. Published GGUFs of FLUX, SD3 or T5 keep some
tensors in float, raise the precision of the layers that hurt most when quantized, and fall back to a 32-weight
block type where a row does not split into 256-weight super-blocks. `tensor_type(preset, name, shape)` returns
the type and the reason for one tensor, in diffusers (and, for T5, transformers) state-dict names, so a plan can
print why every tensor got what it got. The rules, first match wins:

| rule | tensors                                                              | type                           |
|------|----------------------------------------------------------------------|--------------------------------|
| 1    | not 2-D (biases, norm scales, convolutions)                          | F32                            |
| 2    | fewer than SMALL = 65536 weights (e.g. T5's relative_attention_bias) | F32                            |
| 3    | model edges: x_embedder, context_embedder, time_text_embed.*,        | BF16 (`float_type`)            |
|      | time_embed.*, pos_embed.*, norm_out.*, the top-level proj_out;       |                                |
|      | token embeddings (T5 `shared`, `embed_tokens`: not Linear layers)    |                                |
| 4    | `_M` presets and Q2_K: attention value projections (attn.to_v,       | the preset's "more bits" type  |
|      | attn.add_v_proj, SelfAttention.v, self_attn.v_proj) and FFN down     |                                |
|      | projections (ff.net.2, ff_context.net.2, single blocks' proj_out,    |                                |
|      | DenseReluDense.wo, mlp.fc2)                                          |                                |
| 5    | everything else                                                      | the preset's base type         |
| then | row length not a multiple of 256 (K-quants) or 32 (legacy types)     | FALLBACK below, else F32       |

Presets (base type / the type rule 4 gives; nominal bits per weight are the base type's):

| preset | base | more bits | nominal bits/weight |    | preset | base | more bits | nominal bits/weight |
|--------|------|-----------|---------------------|----|--------|------|-----------|---------------------|
| Q2_K   | Q2_K | Q3_K      | 2.625               |    | Q5_K_S | Q5_K | -         | 5.5                 |
| Q3_K_S | Q3_K | -         | 3.4375              |    | Q5_K_M | Q5_K | Q6_K      | 5.5                 |
| Q3_K_M | Q3_K | Q4_K      | 3.4375              |    | Q6_K   | Q6_K | -         | 6.5625              |
| Q4_K_S | Q4_K | -         | 4.5                 |    | Q3_K, Q4_K, Q5_K: as the _S presets      |
| Q4_K_M | Q4_K | Q6_K      | 4.5                 |    | Q8_0, Q5_1, Q5_0, Q4_1, Q4_0, BF16, F16, |
|        |      |           |                     |    | F32: that type for every eligible tensor |

Q2_K is itself a mix (as in llama.cpp, whose "Q2_K" raises the same layers): 2-bit value and FFN-down
projections cost too much quality for the few bytes they save. llama.cpp's _M mixes raise about half of the
FFN-down layers; a diffusion transformer has few blocks, so here all of them are raised.

Fallback for rows that do not split into 256-weight super-blocks (a type of similar width, 32-weight blocks):

| K-quant | fallback | why                                                                 |
|---------|----------|---------------------------------------------------------------------|
| Q2_K    | Q4_0     | no 2- or 3-bit 32-block type exists; Q4_0 is the smallest           |
| Q3_K    | Q4_0     | same                                                                |
| Q4_K    | Q5_0     | Q4_0 would be as small but clearly worse (no min, no search)        |
| Q5_K    | Q5_1     | 5 bits with a min, like Q5_K                                        |
| Q6_K    | Q8_0     | no 6-bit 32-block type                                              |

Why BF16 for the edges and F32 for the rest: the edge layers map between the latent/text spaces and the
transformer width, run once per step, and are where quantization error shows first; a diffusers checkpoint is
stored in bf16, so BF16 keeps them exactly at half the bytes of F32 (pass float_type="F32" for a writer that
stores every unquantized tensor as F32). 1-D and small tensors are a negligible share of the bytes; F32 keeps
them exact whatever the checkpoint's dtype.
"""

from __future__ import annotations

import math
import re

from ..errors import did_you_mean, one_of

SMALL = 65536  # tensors with fewer weights stay in float: quantizing one saves < 100 KB

# bits per weight of every type a mix can return, from the block structs (bytes per block * 8 / weights per block)
BITS_PER_WEIGHT = {
    "F32": 32.0,
    "F16": 16.0,
    "BF16": 16.0,
    "Q8_0": 8.5,
    "Q6_K": 6.5625,
    "Q5_1": 6.0,
    "Q5_0": 5.5,
    "Q5_K": 5.5,
    "Q4_1": 5.0,
    "Q4_0": 4.5,
    "Q4_K": 4.5,
    "Q3_K": 3.4375,
    "Q2_K": 2.625,
}
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

# preset -> (base type, type for value / FFN-down projections, or None)
_MIXES: dict[str, tuple[str, str | None]] = {
    "Q2_K": ("Q2_K", "Q3_K"),
    "Q3_K_S": ("Q3_K", None),
    "Q3_K_M": ("Q3_K", "Q4_K"),
    "Q4_K_S": ("Q4_K", None),
    "Q4_K_M": ("Q4_K", "Q6_K"),
    "Q5_K_S": ("Q5_K", None),
    "Q5_K_M": ("Q5_K", "Q6_K"),
    "Q6_K": ("Q6_K", None),
    "Q3_K": ("Q3_K", None),
    "Q4_K": ("Q4_K", None),
    "Q5_K": ("Q5_K", None),
    **{t: (t, None) for t in ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "BF16", "F16", "F32")},
}
PRESETS = tuple(_MIXES)

# top-level modules of a diffusers transformer that stay in float (rule 3), and token embeddings
_EDGE = re.compile(
    r"^(x_embedder|context_embedder|time_text_embed|time_embed|pos_embed|norm_out|proj_out)(\.|$)"
    r"|(^|\.)(shared|embed_tokens|token_embedding)(\.|$)"
)
# attention value projections and FFN down projections (rule 4), diffusers and transformers names
_MORE_BITS = {
    "attention value projection": re.compile(
        r"(attn\d?\.to_v|attn\d?\.add_v_proj|SelfAttention\.v|self_attn\.v_proj)$"
    ),
    "FFN down projection": re.compile(
        r"(ff\.net\.2|ff_context\.net\.2|single_transformer_blocks\.\d+\.proj_out|DenseReluDense\.wo|mlp\.fc2)$"
    ),
}


def _check_preset(preset: str) -> tuple[str, str | None]:
    if preset not in _MIXES:
        raise ValueError(
            f"Unknown GGUF preset {preset!r}.{did_you_mean(preset, PRESETS)} Use one of {one_of(PRESETS)}."
        )
    return _MIXES[preset]


def nominal_bits(preset: str) -> float:
    """A preset's nominal bits per weight: its base type's (Q4_K_M -> 4.5). See `mix_bits` for a model's average."""
    return BITS_PER_WEIGHT[_check_preset(preset)[0]]


def tensor_type(preset: str, tensor_name: str, shape: tuple[int, ...], *, float_type: str = "BF16") -> tuple[str, str]:
    """The GGUF type for one tensor under a preset, and why.

    Args:
        preset: one of PRESETS, e.g. "Q4_K_M".
        tensor_name: a state-dict key, e.g. "transformer_blocks.0.attn.to_v.weight" (diffusers) or
            "encoder.block.3.layer.1.DenseReluDense.wo.weight" (transformers T5); ".weight"/".bias" are optional.
        shape: the tensor's shape in torch order (out_features, in_features) for a Linear weight.
        float_type: the type for the model's edge layers, "BF16" (default) or "F32".

    Returns:
        (type name, reason), e.g. ("Q6_K", "FFN down projection: Q4_K_M raises it from Q4_K to Q6_K").

    Raises:
        ValueError: unknown preset or float_type.
    """
    base, more = _check_preset(preset)
    if float_type not in ("BF16", "F16", "F32"):
        raise ValueError(f"float_type={float_type!r}: use 'BF16', 'F16' or 'F32'.")
    name = re.sub(r"\.(weight|bias)$", "", tensor_name)
    shape = tuple(int(s) for s in shape)
    size = math.prod(shape)
    if len(shape) != 2:
        return "F32", f"{len(shape)}-D tensor (bias, norm or convolution): not a Linear weight, kept in F32"
    if size < SMALL:
        return "F32", f"small tensor ({size} weights < {SMALL}): quantizing it would save < 100 KB, kept in F32"
    if base in ("BF16", "F16", "F32"):
        return base, f"{preset} keeps every weight in float"
    if _EDGE.search(name):
        return float_type, f"model edge ({name.split('.')[0]}): input/output and embedding layers stay in {float_type}"
    chosen, reason = base, f"base type of {preset}"
    if more:
        for what, pattern in _MORE_BITS.items():
            if pattern.search(name):
                chosen, reason = more, f"{what}: {preset} raises it from {base} to {more}"
                break
    row = shape[-1]
    if chosen in K_QUANTS and row % 256:
        fallback = FALLBACK[chosen]
        chosen, reason = fallback, f"{reason}; row length {row} is not a multiple of 256, so {fallback} instead"
    if chosen not in K_QUANTS and row % 32:
        return "F32", f"{reason}; row length {row} is not a multiple of 32 either, kept in F32"
    return chosen, reason


def mix_bits(preset: str, shapes: dict[str, tuple[int, ...]], *, float_type: str = "BF16") -> float:
    """Average bits per weight of a model's tensors under a preset (float tensors count 16 or 32 bits).

    Args:
        preset: one of PRESETS.
        shapes: tensor name -> shape, e.g. {k: tuple(v.shape) for k, v in model.state_dict().items()}.
        float_type: as in `tensor_type`.

    Returns:
        total bits / total weights.
    """
    bits = weights = 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        bits += BITS_PER_WEIGHT[tensor_type(preset, name, shape, float_type=float_type)[0]] * size
        weights += size
    return bits / weights if weights else 0.0


__all__ = ["BITS_PER_WEIGHT", "FALLBACK", "PRESETS", "SMALL", "mix_bits", "nominal_bits", "tensor_type"]
