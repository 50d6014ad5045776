"""quantkit's quantized components are first-class models of diffusers / transformers: the library's config,
quantizer and flags on them, its save_pretrained -> from_pretrained round trip, quantkit's save_pipeline in the
library's format, GGUF as a .gguf file, moves, and the CUDA-only paths refusing on CPU.

Quality metric: PSNR (dB) of the same-seed image before and after the round trip (2 steps, 32x32, tiny random FLUX
layout). Measured on the 2-core CPU machine (AVX512-BF16): quanto int8, torchao int8wo, bnb int8 and bnb nf4:
identical images (inf; nf4 was 48.6 dB before quantkit undid bitsandbytes' CPU layout itself, see
`bitsandbytes_chunks.undo_cpu_layout`); GGUF Q8_0: inf.
The tolerance is 40 dB for every backend: a folder that reloads with wrong or random weights gives < 15 dB.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

import quantkit as qk
from quantkit import PipelineQuantizationConfig
from tests.helpers import psnr

BF16 = torch.bfloat16
ROUND_TRIP_DB = 40
# case id -> (backend, quant_kwargs, Linear class after a reload)
CASES = {
    "bnb-nf4": ("bitsandbytes_4bit", {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": BF16}, "Linear4bit"),
    "bnb-int8": ("bitsandbytes_8bit", {"llm_int8_threshold": 6.0}, "Linear8bitLt"),
    "quanto-int8": ("quanto", {"weights_dtype": "int8"}, "QLinear"),
    "torchao-int8wo": ("torchao", {"quant_type": "int8wo"}, "Linear"),
}
GGUF = ("gguf", {"quant_type": "Q8_0", "compute_dtype": BF16}, "GGUFLinear")
NEEDS_GPU_IN_DIFFUSERS = {"bnb-nf4", "bnb-int8"}  # diffusers' bitsandbytes loader: "No GPU found"


def config(case, components=("transformer",), **extra):
    backend, kwargs, _ = GGUF if case == "gguf" else CASES[case]
    return PipelineQuantizationConfig(
        quant_backend=backend, quant_kwargs={**kwargs, **extra}, components_to_quantize=list(components)
    )


def load(folder, cfg=None, **kwargs):
    return qk.load_pipeline(folder, cfg, torch_dtype=BF16, device="cpu", progress=False, **kwargs)


def draw(pipe):
    """One image with explicit call arguments (a pipeline diffusers loads alone has no generation defaults)."""
    generator = torch.Generator("cpu").manual_seed(0)
    return pipe(
        "a red circle",
        generator=generator,
        num_inference_steps=2,
        height=32,
        width=32,
        max_sequence_length=16,
        output_type="np",
    ).images[0]


def layer_type(pipe) -> str:
    return type(pipe.transformer.transformer_blocks[0].attn.to_q).__name__


# -- the library's own view ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [*CASES, "gguf"])
def test_components_are_quantized_models_of_their_library(flux_dir, case):
    from diffusers.quantizers.base import DiffusersQuantizer
    from diffusers.quantizers.bitsandbytes.utils import _check_bnb_status
    from transformers.quantizers.base import HfQuantizer

    pipe = load(flux_dir, config(case, ["transformer", "text_encoder_2"]))
    adapter = qk.QuantSpec(config(case).quant_backend).adapter
    t = pipe.transformer
    native = t.config.quantization_config
    assert t.config["quantization_config"] is native and adapter.accepts_native(native)
    assert type(native).__module__.startswith("diffusers.")
    assert isinstance(t.hf_quantizer, DiffusersQuantizer) and type(t.hf_quantizer).__module__.startswith("diffusers.")
    assert t.hf_quantizer.pre_quantized and t.is_quantized and t.quantization_method == native.quant_method
    assert _check_bnb_status(t) == (
        (True, True, False)
        if case == "bnb-nf4"
        else (True, False, True)
        if case == "bnb-int8"
        else (False, False, False)
    )
    te = pipe.text_encoder_2
    if case == "gguf":  # transformers has no GGUF-quantized models: its save says so instead
        assert not getattr(te, "is_quantized", False)
        assert "transformers keeps no GGUF-quantized models" in te.quantkit["native"]
        return
    assert isinstance(te.hf_quantizer, HfQuantizer) and te.is_quantized
    assert type(te.config.quantization_config).__module__.startswith("transformers.")
    assert adapter.accepts_native(te.config.quantization_config)


# -- saving and reloading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_save_round_trips(flux_dir, tmp_path, case):
    """pipe.save_pretrained -> diffusers alone; qk.save_pipeline -> the same format; qk.load_pipeline on both."""
    from diffusers import DiffusionPipeline, FluxTransformer2DModel

    pipe = load(flux_dir, config(case))
    before = draw(pipe)
    pipe.save_pretrained(tmp_path / "by-diffusers")
    qk.save_pipeline(pipe, tmp_path / "by-quantkit")
    for name in ("by-diffusers", "by-quantkit"):
        folder = tmp_path / name
        files = sorted(p.name for p in (folder / "transformer").iterdir())
        assert files == ["config.json", "diffusion_pytorch_model.safetensors"], files  # the library's format only
        saved = json.loads((folder / "transformer" / "config.json").read_text())["quantization_config"]
        assert saved["quant_method"] == pipe.transformer.config.quantization_config.quant_method.value
        if case in NEEDS_GPU_IN_DIFFUSERS:  # a GPU test covers diffusers alone; on CPU it refuses, it does not guess
            with pytest.raises(RuntimeError, match="No GPU found"):
                DiffusionPipeline.from_pretrained(folder, dtype=BF16)
        else:
            _, info = FluxTransformer2DModel.from_pretrained(
                folder / "transformer", dtype=BF16, output_loading_info=True
            )
            assert info["missing_keys"] == [] and info["mismatched_keys"] == []
            alone = DiffusionPipeline.from_pretrained(folder, dtype=BF16)
            assert layer_type(alone) == CASES[case][2]
            db = psnr(draw(alone), before)
            print(f"{case} {name}: diffusers alone {db:.1f} dB")
            assert db >= ROUND_TRIP_DB
        again = qk.load_pipeline(folder, progress=False, device="cpu")
        assert str(again.quantkit_plan.components["transformer"].loader) == "quantkit restore"
        assert layer_type(again) == CASES[case][2] and again.transformer.is_quantized
        db = psnr(draw(again), before)
        print(f"{case} {name}: quantkit {db:.1f} dB")
        assert db >= ROUND_TRIP_DB


def test_files_diffusers_writes_put_int8_weights_at_16_byte_offsets(flux_dir, tmp_path):
    """torch's CPU int8 matmul (quanto's kernel) segfaults on a weight memory-mapped at an 8-byte offset; the header
    padding quantkit's quantizer adds is computed exactly as safetensors lays the file out."""
    from quantkit.load.native import ALIGN_KEY, header_padding

    pipe = load(flux_dir, config("quanto-int8"))
    pipe.transformer.save_pretrained(tmp_path / "t")
    path = tmp_path / "t" / "diffusion_pytorch_model.safetensors"
    with path.open("rb") as f:
        length = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(length))
    int8 = [v["data_offsets"][0] for k, v in header.items() if k != "__metadata__" and v["dtype"] == "I8"]
    assert int8 and all((8 + length + o) % 16 == 0 for o in int8)
    assert ALIGN_KEY in header["__metadata__"]
    state = pipe.transformer.state_dict()
    assert header_padding(state, {"format": "pt"}) == header["__metadata__"][ALIGN_KEY]


def test_gguf_component_saves_as_a_gguf_file(flux_dir, tmp_path):
    from diffusers import FluxPipeline, FluxTransformer2DModel, GGUFQuantizationConfig

    pipe = load(flux_dir, config("gguf"))
    before = draw(pipe)
    with pytest.raises(ValueError) as info:
        pipe.save_pretrained(tmp_path / "refused")
    assert "diffusers cannot save GGUF models" in str(info.value) and "quantkit.save_pipeline" in str(info.value)
    assert "from_single_file" in str(info.value)
    folder = qk.save_pipeline(pipe, tmp_path / "saved")
    gguf_file = folder / "transformer" / "diffusion_pytorch_model.gguf"
    assert gguf_file.is_file() and not list((folder / "transformer").glob("*.safetensors"))
    transformer = FluxTransformer2DModel.from_single_file(
        str(gguf_file),
        quantization_config=GGUFQuantizationConfig(compute_dtype=BF16),
        config=str(folder),
        subfolder="transformer",
        dtype=BF16,
    )
    alone = FluxPipeline.from_pretrained(folder, transformer=transformer, dtype=BF16)
    assert layer_type(alone) == "GGUFLinear"
    db_single = psnr(draw(alone), before)
    again = qk.load_pipeline(folder, progress=False, device="cpu")
    assert (
        layer_type(again) == "GGUFLinear"
        and str(again.quantkit_plan.components["transformer"].loader) == "quantkit restore"
    )
    db_qk = psnr(draw(again), before)
    print(f"gguf Q8_0: from_single_file {db_single:.1f} dB, quantkit {db_qk:.1f} dB")
    assert db_single >= ROUND_TRIP_DB and db_qk >= ROUND_TRIP_DB
    with pytest.raises(OSError):  # diffusers alone finds no weights it can read: an error, not random weights
        FluxPipeline.from_pretrained(folder, dtype=BF16)


def test_what_a_library_cannot_express_is_refused_not_saved_wrong(flux_dir, tmp_path):
    """diffusers' quanto quantizer names skipped layers by their local name ("linear"): keeping one `norm1.linear` in
    full precision cannot be written so that diffusers reloads it right. save_pretrained refuses, save_pipeline
    writes quantkit's format (which diffusers cannot load: an error, never random weights)."""
    from diffusers import DiffusionPipeline

    pipe = load(flux_dir, config("quanto-int8", modules_to_not_convert=["transformer_blocks.0.norm1.linear"]))
    assert "would convert other Linear layers" in pipe.transformer.quantkit["native"]
    before = draw(pipe)
    with pytest.raises(ValueError, match="cannot name the layers kept in full precision"):
        pipe.save_pretrained(tmp_path / "refused")
    folder = qk.save_pipeline(pipe, tmp_path / "saved")
    assert sorted(p.name for p in (folder / "transformer").iterdir()) == [
        "config.json",
        "quantkit_quantization.json",
        "quantkit_weights.safetensors",
    ]
    assert "quantization_config" not in json.loads((folder / "transformer" / "config.json").read_text())
    with pytest.raises(OSError, match="no file named"):
        DiffusionPipeline.from_pretrained(folder, dtype=BF16)
    assert psnr(draw(qk.load_pipeline(folder, progress=False, device="cpu")), before) >= ROUND_TRIP_DB


def test_a_damaged_folder_is_an_error_not_random_weights(flux_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    pipe = load(flux_dir, config("torchao-int8wo"))
    folder = qk.save_pipeline(pipe, tmp_path / "saved")
    path = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    del tensors["proj_out.bias"]
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match="never fills them with random values"):
        qk.load_pipeline(folder, progress=False, device="cpu")


def test_text_encoder_transformers_cannot_save_gets_quantkits_format(flux_dir, tmp_path):
    pipe = load(flux_dir, config("quanto-int8", ["transformer", "text_encoder_2"]))
    before = draw(pipe)
    with pytest.raises(ValueError, match="transformers's quanto quantizer cannot save"):
        pipe.text_encoder_2.save_pretrained(tmp_path / "refused")
    folder = qk.save_pipeline(pipe, tmp_path / "saved")
    assert (folder / "transformer" / "diffusion_pytorch_model.safetensors").is_file()  # diffusers can: its format
    assert (folder / "text_encoder_2" / "quantkit_weights.safetensors").is_file()  # transformers cannot: quantkit's
    again = qk.load_pipeline(folder, progress=False, device="cpu")
    assert {n: str(c.loader) for n, c in again.quantkit_plan.components.items() if c.spec} == {
        "transformer": "quantkit restore",
        "text_encoder_2": "quantkit restore",
    }
    assert psnr(draw(again), before) >= ROUND_TRIP_DB


def test_quantkit_format_is_still_written_and_read(flux_dir, tmp_path):
    pipe = load(flux_dir, config("bnb-int8"))
    before = draw(pipe)
    folder = qk.save_pipeline(pipe, tmp_path / "old", format="quantkit")
    info = json.loads((folder / "transformer" / "quantkit_quantization.json").read_text())
    assert info["format"] == 1 and info["quant"]["backend"] == "bitsandbytes_8bit"
    assert psnr(draw(qk.load_pipeline(folder, progress=False, device="cpu")), before) >= ROUND_TRIP_DB
    with pytest.raises(ValueError, match="format='zip'"):
        qk.save_pipeline(pipe, tmp_path / "x", format="zip")


def test_saving_with_lora_adapters_loaded_is_refused(flux_dir, tmp_path):
    from tests.test_lora import make_lora

    pipe = load(flux_dir, config("quanto-int8"))
    pipe.load_lora_weights(make_lora(flux_dir, tmp_path / "lora", seed=1), adapter_name="a")
    with pytest.raises(ValueError, match="unload_lora_weights"):
        qk.save_pipeline(pipe, tmp_path / "saved")


# -- moving between devices --------------------------------------------------------------------------------


def test_moves_behave_as_diffusers_quantized_models(flux_dir):
    pipe = load(flux_dir, config("quanto-int8"))
    before = draw(pipe)
    pipe.to("cpu")
    assert psnr(draw(pipe), before) == float("inf")
    with pytest.raises(ValueError, match="Casting a quantized model to a new `dtype` is unsupported"):
        pipe.transformer.to(torch.float16)  # diffusers' own rule for quantized models
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            pipe.transformer.to("cuda")
    bnb = load(flux_dir, config("bnb-int8"))
    bnb.to(torch.float16)  # a pipeline leaves bitsandbytes layers as they are (diffusers warns)
    assert (
        layer_type(bnb) == "Linear8bitLt"
        and bnb.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.int8
    )


# -- offload and compile: CUDA only, refused before any work on CPU -----------------------------------------


def test_offload_and_compile_say_why_not_on_cpu(flux_dir, monkeypatch):
    import quantkit.load.pipeline as loader
    from quantkit.comparison.variants import QuantVariant, check_variants
    from quantkit.load.offload import check_compile, check_offload

    def no_load(*args, **kwargs):
        raise AssertionError("loaded weights before refusing")

    monkeypatch.setattr(loader, "load_component", no_load)
    for mode in ("model", "sequential", "group"):
        with pytest.raises(RuntimeError, match=f"offload='{mode}' needs a CUDA device"):
            qk.load_pipeline(flux_dir, config("quanto-int8"), device="cpu", progress=False, offload=mode)
    with pytest.raises(ValueError, match="offload='disk' is not an offload mode"):
        check_offload("disk", "cuda")
    with pytest.raises(RuntimeError, match="compile='regional' needs a CUDA device"):
        check_compile(True, "cpu")
    with pytest.raises(ValueError, match="compile='max' is not a compile mode"):
        QuantVariant(None, compile="max")
    variant = QuantVariant(config("quanto-int8"), offload="model", compile=True)
    assert variant.to_dict()["offload"] == "model" and variant.to_dict()["compile"] == "regional"
    assert QuantVariant.from_dict(variant.to_dict()) == variant
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="need a CUDA GPU"):
            check_variants({"baseline": None, "q-offload": variant})
    plain = check_variants({"baseline": None, "q": QuantVariant(config("quanto-int8"))})
    assert isinstance(plain["q"], PipelineQuantizationConfig)  # nothing beyond the config: a plain variant


def test_plan_reads_a_folder_in_the_librarys_format(flux_dir, tmp_path):
    pipe = load(flux_dir, config("torchao-int8wo"))
    pipe.save_pretrained(tmp_path / "saved")
    c = qk.plan(tmp_path / "saved", device="cpu").components["transformer"]
    assert str(c.loader) == "quantkit restore" and c.quantization == "torchao int8wo"
    with pytest.raises(ValueError, match="is already quantized"):
        qk.plan(tmp_path / "saved", config("torchao-int8wo"), device="cpu")
    assert Path(tmp_path / "saved" / "model_index.json").is_file()


def test_bnb_4bit_state_dict_after_a_cpu_forward_keeps_the_model_and_saves_it_right(tmp_path):
    """bitsandbytes lays 4-bit weights out for its AVX512-BF16 kernel at the first CPU forward, and its own inverse
    (run by state_dict / save) leaves the statistics of layers wider than 64 in the wrong order. The embedded
    pipeline's layers are 128 wide: state_dict() and a save after an image must change neither the live model
    nor what reloads (same image, bit for bit)."""
    from bitsandbytes.functional import has_avx512bf16

    from tests.helpers import generate

    config = PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit",
        quant_kwargs={"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32"},
        components_to_quantize=["transformer"],
    )
    pipe = qk.load_pipeline(None, config, device="cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    before = generate(pipe, steps=3)
    laid_out = [
        m for m in pipe.transformer.modules() if getattr(getattr(m, "quant_state", None), "packing_format_for_cpu", 0)
    ]
    if has_avx512bf16():
        assert laid_out, "this CPU has AVX512-BF16: the first forward should have laid the weights out"
    pipe.transformer.state_dict()
    assert psnr(generate(pipe, steps=3), before) == float("inf")
    qk.save_pipeline(pipe, tmp_path / "saved")
    reloaded = qk.load_pipeline(tmp_path / "saved", None, device="cpu", progress=False)
    reloaded.set_progress_bar_config(disable=True)
    assert psnr(generate(reloaded, steps=3), before) == float("inf")
