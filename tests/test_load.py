"""load_pipeline on tiny pipelines: every backend, simple and mapped, against the unquantized pipeline.

Quality metric: PSNR (dB) of the same-seed image against the unquantized pipeline's, 2 steps, 32x32.
Tolerances per backend are set ~6 dB under what the tiny random FLUX pipeline gives (8-bit ~49 dB,
4-bit ~36-38 dB), so a broken quantizer (noise, wrong scales: < 20 dB) fails while run-to-run drift does not.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

import quantkit as qk
from quantkit import PipelineQuantizationConfig, QuantSpec
from tests.helpers import generate, psnr

BF16 = torch.bfloat16
SEED_COMPONENTS = ["transformer", "text_encoder_2"]
# backend id -> (quant_kwargs, expected Linear class name, minimum PSNR in dB)
CASES = {
    "bnb-nf4": (
        "bitsandbytes_4bit",
        {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": BF16},
        "Linear4bit",
        30,
    ),
    "bnb-int8": ("bitsandbytes_8bit", {"load_in_8bit": True}, "Linear8bitLt", 40),
    "gguf-Q4_0": ("gguf", {"quant_type": "Q4_0", "compute_dtype": BF16}, "GGUFLinear", 30),
    "quanto-int8": ("quanto", {"weights_dtype": "int8"}, "QLinear", 40),
    "torchao-int8wo": ("torchao", {"quant_type": "int8wo"}, "Linear", 40),
}


def load(folder, config, **kwargs):
    return qk.load_pipeline(folder, config, torch_dtype=BF16, device="cpu", progress=False, **kwargs)


def simple(case_id, components=SEED_COMPONENTS):
    backend, kwargs, _, _ = CASES[case_id]
    return PipelineQuantizationConfig(quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=components)


@pytest.fixture(scope="module")
def baseline(flux_dir):
    pipe = load(flux_dir, None)
    return pipe, generate(pipe)


def loaded(flux_dir, case_id):
    """A fresh load each time: generating with a pipeline changes it (bnb repacks on CPU), so none is shared."""
    return load(flux_dir, simple(case_id))


def linear_types(model) -> set[str]:
    return {type(m).__name__ for n, m in model.named_modules() if n.endswith(("to_q", ".q", "ff.net.2", "proj_mlp"))}


@pytest.mark.parametrize("case_id", list(CASES))
def test_simple_form_quantizes_named_components_and_stays_close(flux_dir, baseline, case_id):
    base_pipe, base_image = baseline
    _, _, layer_class, min_psnr = CASES[case_id]
    pipe = loaded(flux_dir, case_id)
    for name in SEED_COMPONENTS:
        assert linear_types(getattr(pipe, name)) == {layer_class}, name
        planned = pipe.quantkit_plan.components[name].quantized_layers
        assert planned, f"no layer of {name} was quantized"
    if case_id == "torchao-int8wo":
        assert type(pipe.transformer.transformer_blocks[0].attn.to_q.weight).__name__ == "Int8Tensor"
    # components not named stay bit-identical to the unquantized load
    for name in ("vae", "text_encoder"):
        ours, ref = getattr(pipe, name).state_dict(), getattr(base_pipe, name).state_dict()
        assert all(torch.equal(ours[k], ref[k]) for k in ref), name
    image = generate(pipe)
    assert psnr(image, base_image) >= min_psnr
    assert psnr(image, base_image) < 200  # it did change something


@pytest.mark.parametrize("case_id", list(CASES))
def test_footprint_matches_plan_and_serialized_size(flux_dir, tmp_path, case_id):
    pipe = load(flux_dir, simple(case_id))  # fresh: the plan estimates the state right after loading
    frame = qk.footprint(pipe)
    planned = pipe.quantkit_plan.to_frame()
    for name in SEED_COMPONENTS:
        assert frame.loc[name, "bytes"] == pytest.approx(planned.loc[name, "bytes_after"], rel=0.05), name
        assert frame.loc[name, "quantized_params"] > 0
    out = qk.save_pipeline(pipe, tmp_path / "saved", format="quantkit")  # quantkit's own format: one file to measure
    for name in SEED_COMPONENTS:
        assert frame.loc[name, "bytes"] == pytest.approx(
            _tensor_bytes(out / name / "quantkit_weights.safetensors"), rel=0.02
        ), name
    if case_id == "bnb-int8":  # its first forward moves the row scales into module.state: still counted
        generate(pipe)
        assert qk.footprint(pipe).loc["transformer", "bytes"] == frame.loc["transformer", "bytes"]
    again = qk.load_pipeline(out, progress=False)  # no config: it knows it is quantized
    for name in SEED_COMPONENTS:
        assert getattr(again, name).quantkit["backend"] == CASES[case_id][0]
    assert psnr(generate(again), generate(pipe)) >= 40


def _tensor_bytes(path: Path) -> int:
    """Bytes of tensor data in a safetensors file (its size less the JSON header)."""
    with path.open("rb") as f:
        header = struct.unpack("<Q", f.read(8))[0]
    return path.stat().st_size - 8 - header


def test_bits_per_weight(flux_dir):
    bpw = {case: qk.footprint(loaded(flux_dir, case)).loc["transformer", "bits_per_weight"] for case in CASES}
    assert 4.0 < bpw["bnb-nf4"] < 5.0 and 4.0 < bpw["gguf-Q4_0"] < 5.0
    assert 8.0 < bpw["bnb-int8"] < 9.0 and 8.0 < bpw["quanto-int8"] < 9.0 and 8.0 < bpw["torchao-int8wo"] < 9.0


def test_reported_memory_is_wrong_for_tensor_subclasses(flux_dir):
    frame = qk.footprint(loaded(flux_dir, "quanto-int8"))
    assert frame.loc["transformer", "reported_bytes"] > 1.7 * frame.loc["transformer", "bytes"]


def test_mapped_form_mixes_backends_and_libraries(flux_dir, baseline):
    config = PipelineQuantizationConfig(
        quant_mapping={
            "transformer": QuantSpec("quanto", weights_dtype="int8"),
            "text_encoder_2": QuantSpec("bitsandbytes_4bit", quant_type="nf4", compute_dtype="bfloat16"),
        }
    )
    pipe = load(flux_dir, config)
    assert linear_types(pipe.transformer) == {"QLinear"}
    assert linear_types(pipe.text_encoder_2) == {"Linear4bit"}
    assert psnr(generate(pipe), baseline[1]) >= 30


def test_seed_mapping_with_native_configs(flux_dir, baseline):
    from diffusers import BitsAndBytesConfig as DiffusersBitsAndBytesConfig
    from transformers import BitsAndBytesConfig as TransformersBitsAndBytesConfig

    config = PipelineQuantizationConfig(
        quant_mapping={
            "transformer": DiffusersBitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16),
            "text_encoder_2": TransformersBitsAndBytesConfig(load_in_4bit=True, compute_dtype=torch.bfloat16),
        }
    )
    pipe = load(flux_dir, config)  # diffusers itself refuses this on a CPU ("No GPU found")
    assert linear_types(pipe.transformer) == {"Linear4bit"}
    assert psnr(generate(pipe), baseline[1]) >= 25  # fp4 (the default quant type) is coarser than nf4


@pytest.mark.parametrize("native", ["quanto", "torchao"])
def test_same_modules_and_image_as_diffusers_own_path(flux_dir, native):
    """Where diffusers' mapped path works (quanto, torchao), quantkit gives the same modules and image."""
    from diffusers import DiffusionPipeline
    from diffusers import PipelineQuantizationConfig as DiffusersConfig

    from quantkit.models.defaults import apply_generation_defaults, read_generation_defaults

    spec = (
        QuantSpec("quanto", weights_dtype="int8") if native == "quanto" else QuantSpec("torchao", quant_type="int8wo")
    )
    ours = load(flux_dir, PipelineQuantizationConfig(quant_mapping={"transformer": spec}))
    theirs = DiffusionPipeline.from_pretrained(
        flux_dir,
        torch_dtype=BF16,
        quantization_config=DiffusersConfig(quant_mapping={"transformer": spec.native("diffusers")}),
    )
    apply_generation_defaults(theirs, read_generation_defaults(flux_dir))
    ours_types = {
        n: (type(m).__name__, type(getattr(m, "weight", None)).__name__) for n, m in ours.transformer.named_modules()
    }
    theirs_types = {
        n: (type(m).__name__, type(getattr(m, "weight", None)).__name__) for n, m in theirs.transformer.named_modules()
    }
    assert ours_types == theirs_types
    assert psnr(generate(ours), generate(theirs)) >= 60  # same quantized weights: equal up to float noise


@pytest.mark.parametrize(
    ("layout", "components"), [("sd3", ["transformer", "text_encoder_3"]), ("pixart", ["transformer", "text_encoder"])]
)
@pytest.mark.parametrize("case_id", ["quanto-int8", "gguf-Q4_0", "bnb-nf4"])
def test_other_layouts(tiny_pipeline_dir, layout, components, case_id):
    folder = tiny_pipeline_dir(layout)
    base = generate(load(folder, None))
    pipe = load(folder, simple(case_id, components))
    for name in components:
        assert linear_types(getattr(pipe, name)) == {CASES[case_id][2]}, name
    assert psnr(generate(pipe), base) >= CASES[case_id][3] - 5


@pytest.mark.parametrize("case_id", list(CASES))
def test_mapped_form_for_every_backend(flux_dir, baseline, case_id):
    """The same backend through quant_mapping: a QuantSpec for the transformer, the native config for T5."""
    backend, kwargs, layer_class, min_psnr = CASES[case_id]
    spec = QuantSpec(backend, **kwargs)
    t5_config = spec.native("transformers") or spec  # transformers has no GGUF config class: keep the spec
    pipe = load(flux_dir, PipelineQuantizationConfig(quant_mapping={"transformer": spec, "text_encoder_2": t5_config}))
    assert linear_types(pipe.transformer) == linear_types(pipe.text_encoder_2) == {layer_class}
    assert psnr(generate(pipe), baseline[1]) >= min_psnr


def test_a_quiet_load_leaves_the_libraries_progress_bars_as_the_caller_set_them(flux_dir):
    import diffusers.utils.logging as dl
    import transformers.utils.logging as tl

    dl.disable_progress_bar()
    try:
        qk.load_pipeline(flux_dir, None, device="cpu", progress=False)
        assert not dl.is_progress_bar_enabled(), "the caller turned diffusers' bars off; a load turned them on"
        assert tl.is_progress_bar_enabled()
    finally:
        dl.enable_progress_bar()
