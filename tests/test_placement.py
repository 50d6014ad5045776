"""device_map placement (quantkit.load.placement): by true quantized bytes, diffusers' balanced order, checked
input, and a device-mapped pipeline that behaves as diffusers' does."""

from __future__ import annotations

import pytest
import torch

import quantkit as qk
from quantkit.load.placement import (
    balanced_placement,
    check_device_map,
    explicit_placement,
    gpu_budgets,
)

NF4 = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32"}


def _plan(flux_dir):
    config = qk.PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit", quant_kwargs=NF4, components_to_quantize=["transformer"]
    )
    return qk.plan(flux_dir, config, device="cpu")


def test_balanced_budgets_the_true_quantized_bytes(flux_dir):
    """One GPU with room for the pipeline at its true bytes (NF4 transformer): everything goes there. Budgeted
    as diffusers does (each component unquantized), the same GPU spills a component to the CPU."""
    p = _plan(flux_dir)
    before = {n: c.bytes_before for n, c in p.components.items() if c.is_model}
    after = {n: c.bytes_after for n, c in p.components.items() if c.is_model}
    assert after["transformer"] < before["transformer"] / 3
    budgets = {"cuda:0": sum(after.values()) + 1}
    true = balanced_placement(after, budgets)
    assert true.devices == {n: "cuda:0" for n in after}
    assert true.hf_device_map() == {n: 0 for n in after} and true.main_device == "cuda:0"
    assert list(true.sizes) == sorted(after, key=after.get, reverse=True)  # largest first, as diffusers
    with pytest.warns(UserWarning, match="fit no GPU's remaining budget"):
        unquantized = balanced_placement(before, budgets)
    assert "cpu" in unquantized.devices.values()


def test_balanced_follows_diffusers_order_and_keeps_every_spilled_component():
    """GPUs in the order 0, 1, 1, 0, ...; diffusers' own map keeps only the last spill, here all spill to CPU."""
    from diffusers.pipelines.pipeline_loading_utils import _assign_components_to_devices

    sizes = {"a": 40, "b": 30, "c": 20, "d": 10}
    place = balanced_placement(sizes, {"cuda:0": 100, "cuda:1": 100})
    assert place.devices == {"a": "cuda:0", "b": "cuda:1", "c": "cuda:1", "d": "cuda:0"}
    tight = {"x": 50, "y": 40, "z": 30}
    upstream = _assign_components_to_devices(tight, {"cuda:0": 10})
    assert upstream == {"cpu": ["z"]}  # x and y are in no list: the upstream behaviour this module repairs
    with pytest.warns(UserWarning, match=r"\['x', 'y', 'z'\].*quantize them further"):
        ours = balanced_placement(tight, {"cuda:0": 10})
    assert ours.devices == {"x": "cpu", "y": "cpu", "z": "cpu"}


def test_gpu_budgets_read_max_memory_as_accelerate_spells_it():
    got = gpu_budgets({0: "1GiB", "cuda:1": 2_000_000, "cpu": "64GiB"})
    assert got == {"cuda:0": 1 << 30, "cuda:1": 2_000_000}


def test_explicit_map_is_checked_against_the_components(flux_dir):
    models = {n: c.bytes_after for n, c in _plan(flux_dir).components.items() if c.is_model}
    good = explicit_placement({n: "cpu" for n in models}, models)
    assert set(good.devices.values()) == {"cpu"}
    with pytest.raises(ValueError, match=r"names \['unet'\].*model components are"):
        explicit_placement({**{n: "cpu" for n in models}, "unet": "cpu"}, models)
    with pytest.raises(ValueError, match=r"leaves out \['vae'\].*or use device_map='balanced'"):
        explicit_placement({n: "cpu" for n in models if n != "vae"}, models)
    with pytest.raises(ValueError, match="is not a device name"):
        explicit_placement({**{n: "cpu" for n in models}, "vae": "gpu0"}, models)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            explicit_placement({**{n: "cpu" for n in models}, "vae": 0}, models)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"device_map": "auto"}, ValueError, "strategy diffusers pipelines support is 'balanced'"),
        ({"device_map": ["cpu"]}, TypeError, "must be 'balanced' or a dict"),
        ({"device_map": {"vae": "cpu"}, "device": "cpu"}, ValueError, "drop device="),
        ({"device_map": {"vae": "cpu"}, "offload": "model"}, ValueError, "Pick one"),
        ({"max_memory": {0: "1GiB"}}, ValueError, "pass device_map='balanced' with it"),
        ({"device_map": {"vae": "cpu"}, "max_memory": {0: "1GiB"}}, ValueError, "needs none"),
        ({"device_map": "balanced", "max_memory": "1GiB"}, TypeError, "max_memory must be a dict"),
    ],
)
def test_device_map_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        check_device_map(kwargs.pop("device_map", None), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only refusal")
def test_balanced_without_a_gpu_names_the_fix_before_loading(flux_dir, monkeypatch):
    from quantkit.load import pipeline as module

    monkeypatch.setattr(module, "plan", lambda *a, **k: pytest.fail("planned before the device_map check"))
    with pytest.raises(RuntimeError, match=r"none is available here.*device='cpu'.*explicit device_map dict"):
        qk.load_pipeline(flux_dir, device_map="balanced", progress=False)


def test_device_mapped_pipeline_behaves_as_diffusers_and_draws_the_same_image(flux_dir):
    config = qk.PipelineQuantizationConfig(
        quant_backend="quanto", quant_kwargs={"weights_dtype": "int8"}, components_to_quantize=["transformer"]
    )
    plain = qk.load_pipeline(flux_dir, config, device="cpu", progress=False)
    models = [n for n, c in plain.quantkit_plan.components.items() if c.is_model]
    mapped = qk.load_pipeline(flux_dir, config, device_map={n: "cpu" for n in models}, progress=False)
    assert mapped.hf_device_map == {n: "cpu" for n in models}
    assert all(hasattr(getattr(mapped, n), "_hf_hook") for n in models)  # accelerate's AlignDevicesHook
    with pytest.raises(ValueError, match="reset_device_map"):  # diffusers' own refusal for a mapped pipeline
        mapped.to("cpu")
    args = {"prompt": "a red circle", "num_inference_steps": 2, "output_type": "pt"}
    a = plain(**args, generator=torch.Generator().manual_seed(0)).images
    b = mapped(**args, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(a, b), f"max |diff| {float((a - b).abs().max())}"
    mapped.reset_device_map()
    assert mapped.hf_device_map is None


@pytest.mark.gpu
def test_mapped_over_gpu_and_cpu_generates(flux_dir):
    config = qk.PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit", quant_kwargs=NF4, components_to_quantize=["transformer"]
    )
    pipe = qk.load_pipeline(
        flux_dir,
        config,
        device_map={"transformer": "cuda:0", "text_encoder": "cpu", "text_encoder_2": "cuda:0", "vae": "cpu"},
        progress=False,
    )
    assert next(pipe.transformer.parameters()).device.type == "cuda"
    assert next(pipe.vae.parameters()).device.type == "cpu"
    image = pipe("a red circle", num_inference_steps=2, output_type="pt").images
    assert torch.isfinite(image).all()
    balanced = qk.load_pipeline(flux_dir, config, device_map="balanced", progress=False)
    assert set(balanced.hf_device_map.values()) <= set(range(torch.cuda.device_count()))
