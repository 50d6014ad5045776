"""plan(): per-component decisions and sizes from headers alone, and the errors raised before loading."""

from __future__ import annotations

import gc
import json
import shutil

import pytest
import torch

import quantkit as qk
from quantkit import PipelineQuantizationConfig, QuantSpec


def config(backend="quanto", components=("transformer", "text_encoder_2"), **kwargs):
    kwargs = kwargs or {"weights_dtype": "int8"}
    return PipelineQuantizationConfig(
        quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=list(components)
    )


def test_plan_lists_every_component(flux_dir):
    p = qk.plan(flux_dir, config(), device="cpu", torch_dtype=torch.bfloat16)
    assert set(p.components) == {
        "scheduler",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "transformer",
        "vae",
    }
    t5 = p.components["text_encoder_2"]
    assert (t5.library, t5.class_name, t5.quantization) == ("transformers", "T5EncoderModel", "quanto int8")
    assert type(t5.config).__module__.startswith("transformers") and t5.config.weights == "int8"
    assert type(p.components["transformer"].config).__module__.startswith("diffusers")
    assert p.components["vae"].spec is None and p.components["tokenizer"].is_model is False
    frame = p.to_frame()
    assert {"bytes_before", "bytes_after", "library", "class"} <= set(frame.columns)
    assert frame.loc["transformer", "bytes_after"] < 0.6 * frame.loc["transformer", "bytes_before"]
    assert frame.loc["vae", "bytes_after"] == frame.loc["vae", "bytes_before"]
    text = repr(p)
    assert "text_encoder_2  T5EncoderModel" in text and "quanto int8" in text
    assert "<table>" in p._repr_html_()


def test_bytes_before_come_from_headers(flux_dir):
    p = qk.plan(flux_dir, None, device="cpu", torch_dtype=torch.float32)
    pipe = qk.load_pipeline(flux_dir, None, torch_dtype=torch.float32, device="cpu", progress=False)
    frame = qk.footprint(pipe)
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        # equal up to buffers that are not saved (CLIP's position_ids: 128 B)
        assert p.components[name].bytes_before == pytest.approx(frame.loc[name, "bytes"], rel=0.001), name


def test_bnb_keeps_t5_wo_in_full_precision_like_transformers(flux_dir):
    p = qk.plan(flux_dir, config("bitsandbytes_8bit", load_in_8bit=True), device="cpu")
    kept = p.components["text_encoder_2"].skipped_layers
    assert kept and all(name.endswith(".wo") for name in kept)
    assert all("_keep_in_fp32_modules" not in why and "skip list" in why for why in kept.values())


def test_layers_a_backend_cannot_take_are_listed_with_the_reason(flux_dir):
    p = qk.plan(flux_dir, config(modules_to_not_convert=["proj_out"], weights_dtype="int8"), device="cpu")
    assert p.components["transformer"].skipped_layers["proj_out"] == "in the skip list ('proj_out')"


def test_unknown_component_lists_the_pipelines(flux_dir):
    with pytest.raises(ValueError) as info:
        qk.plan(flux_dir, config(components=["transfomer"]))
    assert str(info.value) == (
        "Component 'transfomer' is not in this FluxPipeline. Did you mean 'transformer'? Its "
        "components: 'scheduler', 'text_encoder', 'text_encoder_2', 'tokenizer', 'tokenizer_2', "
        "'transformer' or 'vae'."
    )


def test_non_model_component(flux_dir):
    with pytest.raises(ValueError, match="Component 'tokenizer' is a CLIPTokenizer, not a model with weights"):
        qk.plan(flux_dir, config(components=["tokenizer"]))


def test_source_that_is_not_a_pipeline(flux_dir, tmp_path):
    with pytest.raises(ValueError, match="has no model_index.json. It looks like one component of a pipeline"):
        qk.plan(flux_dir / "transformer")
    with pytest.raises(FileNotFoundError, match="neither a folder nor a hub id"):
        qk.plan(str(tmp_path / "missing" / "x" / "y"))
    with pytest.raises(TypeError, match="Convert a diffusers one with PipelineQuantizationConfig.from_diffusers"):
        qk.plan(flux_dir, config().to_diffusers(qk.plan(flux_dir).libraries()))


def test_cuda_only_config_on_cpu_names_alternatives(flux_dir):
    c = config("torchao", components=["transformer"], quant_type="int4wo")
    p = qk.plan(flux_dir, c, device="cpu")
    assert p.problems() == {
        "transformer": "torchao 'int4wo' (Int4WeightOnlyConfig) needs a CUDA GPU (its CPU kernels are missing)"
    }
    with pytest.raises(RuntimeError) as info:
        qk.load_pipeline(flux_dir, c, device="cpu", progress=False)
    assert "Instead: on CPU use torchao 'int8wo', 'int8dq' or 'float8wo', quanto 'int4'" in str(info.value)


def test_missing_backend_package_gives_the_pip_command(flux_dir, monkeypatch):
    from quantkit.backends.quanto import Quanto

    monkeypatch.setattr(Quanto, "module", "optimum_quanto_not_installed")
    with pytest.raises(ImportError) as info:
        qk.load_pipeline(flux_dir, config(), device="cpu", progress=False)
    assert "pip install 'optimum-quanto>=0.2.7'" in str(info.value)


def test_gguf_cannot_serve_a_conv_only_vae(flux_dir):
    with pytest.raises(ValueError) as info:
        qk.load_pipeline(flux_dir, config("gguf", components=["vae"], quant_type="Q8_0"), device="cpu", progress=False)
    assert "GGUF quantizes Linear weights only" in str(info.value)
    assert "Instead: leave this component unquantized" in str(info.value)


# -- GGUF files ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _own_gguf_cache(tmp_path, monkeypatch):
    """Each test here sees only the GGUF files it wrote itself."""
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))


def _gguf_files(pattern="transformer-Q8_0-*.gguf"):
    from quantkit.backends.gguf import cache_dir

    return sorted(cache_dir().glob(pattern))


def test_gguf_files_are_cached(flux_dir, monkeypatch):
    from quantkit.backends import gguf_files

    c = config("gguf", components=["transformer"], quant_type="Q8_0")
    qk.load_pipeline(flux_dir, c, device="cpu", progress=False)
    files = _gguf_files()
    assert len(files) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("the second load wrote the GGUF file again")

    monkeypatch.setattr(gguf_files, "write_gguf", refuse)
    pipe = qk.load_pipeline(flux_dir, c, device="cpu", progress=False)
    assert type(pipe.transformer.proj_out).__name__ == "GGUFLinear"


def test_gguf_file_given_by_path_loads_like_a_published_one(flux_dir):
    c = config("gguf", components=["transformer"], quant_type="Q8_0")
    qk.load_pipeline(flux_dir, c, device="cpu", progress=False)
    published = PipelineQuantizationConfig(
        quant_mapping={"transformer": QuantSpec("gguf", quant_type="Q8_0", gguf_file=str(_gguf_files()[0]))}
    )
    pipe = qk.load_pipeline(flux_dir, published, device="cpu", progress=False)
    assert type(pipe.transformer.proj_out).__name__ == "GGUFLinear"


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_bad_gguf_files(flux_dir, tmp_path, damage):
    c = config("gguf", components=["transformer"], quant_type="Q8_0")
    qk.load_pipeline(flux_dir, c, device="cpu", progress=False)
    bad = tmp_path / "bad.gguf"
    data = _gguf_files()[0].read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"GGUF" + bytes(64) + data[68:])
    mapped = PipelineQuantizationConfig(quant_mapping={"transformer": QuantSpec("gguf", gguf_file=str(bad))})
    with pytest.raises(ValueError) as info:
        qk.load_pipeline(flux_dir, mapped, device="cpu", progress=False)
    assert "is not a valid GGUF file" in str(info.value) and "corrupt or truncated" in str(info.value)


def test_mismatched_gguf_file(flux_dir, tmp_path):
    from quantkit.backends.gguf import write_gguf

    other = write_gguf(flux_dir / "text_encoder_2", tmp_path / "t5.gguf", "Q8_0", [])
    shutil.copy(other, tmp_path / "t5-copy.gguf")
    wrong = PipelineQuantizationConfig(
        quant_mapping={"transformer": QuantSpec("gguf", gguf_file=str(tmp_path / "t5-copy.gguf"))}
    )
    with pytest.raises(ValueError) as info:
        qk.load_pipeline(flux_dir, wrong, device="cpu", progress=False)
    # the T5 file shares no tensor name with the transformer, so it goes to diffusers' converter, which fails
    assert "could not be loaded into FluxTransformer2DModel" in str(info.value)


def test_failed_load_leaves_nothing_behind(flux_dir, tmp_path):
    """A load that fails on the second component releases the first (no half-loaded pipeline)."""
    from diffusers import FluxTransformer2DModel

    broken = tmp_path / "broken"
    shutil.copytree(flux_dir, broken)
    cfg = json.loads((broken / "text_encoder_2" / "config.json").read_text())
    cfg["d_ff"] = cfg["d_ff"] * 2  # the weights no longer fit the config
    (broken / "text_encoder_2" / "config.json").write_text(json.dumps(cfg))

    def alive():
        gc.collect()
        return sum(isinstance(o, FluxTransformer2DModel) for o in gc.get_objects())

    before = alive()
    with pytest.raises(ValueError) as info:
        qk.load_pipeline(broken, config(), device="cpu", progress=False)
    assert "has shape" in str(info.value) and "The weights do not belong to this config" in str(info.value)
    assert alive() == before


def test_quantized_folder_refuses_a_second_config(flux_dir, tmp_path):
    pipe = qk.load_pipeline(flux_dir, config(components=["transformer"]), device="cpu", progress=False)
    out = qk.save_pipeline(pipe, tmp_path / "q")
    assert qk.plan(out).components["transformer"].loader == "quantkit restore"
    with pytest.raises(ValueError, match="is already quantized \\(quanto int8\\)"):
        qk.plan(out, config(components=["transformer"]))
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        qk.save_pipeline(pipe, out)


def test_hub_id_without_network_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError) as info:  # planning reads configs only: it says what works offline
        qk.plan("quantkit-tests/not-a-real-pipeline")
    assert "Could not read 'quantkit-tests/not-a-real-pipeline' from the Hugging Face hub" in str(info.value)
    assert "pass a catalog id" in str(info.value) and "black-forest-labs/FLUX.1-dev" in str(info.value)
    with pytest.raises(OSError) as info:  # loading needs the weights: the download fails
        qk.load_pipeline("quantkit-tests/not-a-real-pipeline", progress=False)
    assert "Could not get 'quantkit-tests/not-a-real-pipeline' from the hub" in str(info.value)
    assert "pass a local pipeline folder (or None for the embedded pipeline)" in str(info.value)


def test_gguf_streaming_equals_diffusers_single_file(flux_dir):
    """quantkit reads its own GGUF files itself; diffusers' from_single_file gives the same model and image."""
    import torch

    from quantkit.backends.gguf import _from_single_file
    from tests.helpers import generate, psnr

    c = config("gguf", components=["transformer"], quant_type="Q4_0", compute_dtype="bfloat16")
    ours = qk.load_pipeline(flux_dir, c, device="cpu", torch_dtype=torch.bfloat16, progress=False)
    p = ours.quantkit_plan
    (path,) = _gguf_files("transformer-Q4_0-*.gguf")
    theirs = _from_single_file(p.components["transformer"], path, torch.bfloat16, torch.bfloat16, p.device)
    kinds = {n: type(m).__name__ for n, m in theirs.named_modules()}
    assert kinds == {n: type(m).__name__ for n, m in ours.transformer.named_modules()}
    image = generate(ours)
    ours.transformer = theirs
    assert psnr(generate(ours), image) >= 60
