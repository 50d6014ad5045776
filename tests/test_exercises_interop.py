"""The interop lessons' exercise checkers (quantkit/show/exercises/interop.py): each fails the mistakes a learner
makes with a hint, passes the solution, and only prints a reminder for the unanswered placeholder.

`check_diffusers_shareable` is tested on real folders of the tiny FLUX layout saved with each backend: it loads
them with diffusers alone, so these tests also pin down which saved formats diffusers reads on a CPU.
"""

from __future__ import annotations

import pytest

import quantkit as qk
from quantkit.show.exercises import interop as ex

GIB = 2**30
# FLUX.1-dev nf4 at 1024², as the plan predicts it (GiB the card needs, CUDA context included), rounded
PREDICTED = {None: 16.0 * GIB, "model": 7.4 * GIB, "group": 5.5 * GIB, "sequential": 5.4 * GIB}

# -- offload and compile ----------------------------------------------------------------------------------------


def test_offload_choice(capsys):
    ex.check_offload_choice(..., PREDICTED, 12)
    assert "Not answered yet" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=r"needs 16.0 GiB by the plan .* more than the 12 GiB card"):
        ex.check_offload_choice(None, PREDICTED, 12)  # None is an answer here: no offload
    with pytest.raises(AssertionError, match="not the fastest mode that fits: it moves every layer"):
        ex.check_offload_choice("sequential", PREDICTED, 12)
    with pytest.raises(AssertionError, match="not the fastest mode that fits: it streams"):
        ex.check_offload_choice("group", PREDICTED, 12)
    with pytest.raises(AssertionError, match="'disk' is not an offload mode"):
        ex.check_offload_choice("disk", PREDICTED, 12)
    with pytest.raises(AssertionError, match="needs 7.4 GiB"):
        ex.check_offload_choice("model", PREDICTED, 6)
    with pytest.raises(ValueError, match="No offload mode in the predictions fits 4 GiB"):
        ex.check_offload_choice("sequential", PREDICTED, 4)
    ex.check_offload_choice("model", PREDICTED, 12)
    out = capsys.readouterr().out
    assert "Correct! offload='model': 7.4 GiB of 12 GiB; 'group', 'sequential' would fit too" in out
    ex.check_offload_choice("Group", PREDICTED, 6)
    ex.check_offload_choice("none", PREDICTED, 24)
    assert capsys.readouterr().out.count("Correct!") == 2


def test_offload_choice_reads_the_plans_predictions(capsys):
    """The notebook's premise: FLUX.1-dev with transformer and T5 in nf4 does not fit 12 GiB without offload, model
    offload fits it; on 6 GiB only group (or sequential) offload does."""
    config = qk.PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit",
        quant_kwargs={"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"},
        components_to_quantize=["transformer", "text_encoder_2"],
    )
    plan = qk.plan("black-forest-labs/FLUX.1-dev", config, device="cuda", torch_dtype="bfloat16")
    peaks = {mode: plan.predict_peak(1024, 1024, offload=mode) for mode in ex.OFFLOAD_SPEED_ORDER}
    with pytest.raises(AssertionError, match="more than the 12 GiB card"):
        ex.check_offload_choice(None, peaks, 12)
    ex.check_offload_choice("model", peaks, 12)
    ex.check_offload_choice("group", peaks, 6)
    assert capsys.readouterr().out.count("Correct!") == 2


# -- LoRA on a quantized pipeline -------------------------------------------------------------------------------

SOLUTION = {key: right for key, (_, right, _) in ex.LORA_SCENARIOS.items()}


def test_lora_strategy(capsys):
    ex.check_lora_strategy(...)
    ex.check_lora_strategy({key: ... for key in ex.LORA_SCENARIOS})
    assert capsys.readouterr().out.count("Not answered yet") == 2
    with pytest.raises(AssertionError, match="cannot be taken out of the quantized weights"):
        ex.check_lora_strategy({**SOLUTION, "users_pick": "fuse"})
    with pytest.raises(AssertionError, match="a GGUF file has none"):
        ex.check_lora_strategy({**SOLUTION, "published_gguf": "fuse"})
    with pytest.raises(AssertionError, match="two small matmuls"):
        ex.check_lora_strategy({**SOLUTION, "one_style_service": "runtime"})
    with pytest.raises(AssertionError, match="set_adapters"):
        ex.check_lora_strategy({**SOLUTION, "tune_weight": "Fuse, then quantize"})
    with pytest.raises(AssertionError, match="not one of the two choices"):
        ex.check_lora_strategy({**SOLUTION, "tune_weight": "merge"})
    with pytest.raises(AssertionError, match="Unknown scenario"):
        ex.check_lora_strategy({**SOLUTION, "other": "fuse"})
    with pytest.raises(AssertionError, match="should be a dict"):
        ex.check_lora_strategy(["fuse"])
    ex.check_lora_strategy({"one_style_service": "fuse", "users_pick": ...})
    assert "still to answer: ['users_pick', 'published_gguf', 'tune_weight']" in capsys.readouterr().out
    ex.check_lora_strategy({**SOLUTION, "users_pick": "quantize, then LoRA"})
    assert "Correct!" in capsys.readouterr().out


# -- 09 save, reload, share --------------------------------------------------------------------------------------

BOTH = ["transformer", "text_encoder_2"]


def _saved(flux_dir, folder, backend=None, components=BOTH, **kwargs):
    config = (
        None
        if backend is None
        else qk.PipelineQuantizationConfig(
            quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=list(components)
        )
    )
    return qk.save_pipeline(qk.load_pipeline(flux_dir, config, device="cpu", progress=False), folder)


def test_saved_formats_name_the_three_formats(flux_dir, tmp_path):
    quanto = ex.saved_formats(_saved(flux_dir, tmp_path / "quanto", "quanto", weights_dtype="int8"))
    assert quanto["transformer"] == ex.Saved("library", "quanto int8", "diffusers")
    assert quanto["text_encoder_2"] == ex.Saved("quantkit", "quanto int8", "transformers")  # transformers can't
    assert quanto["vae"] == ex.Saved("unquantized", None, "diffusers") and "tokenizer" not in quanto
    gguf = ex.saved_formats(_saved(flux_dir, tmp_path / "gguf", "gguf", ["transformer"], quant_type="Q8_0"))
    assert gguf["transformer"] == ex.Saved("gguf", "gguf Q8_0", "diffusers")
    assert set(ex.FORMAT_READERS) == {"library", "gguf", "quantkit", "unquantized"}


def test_diffusers_shareable_really_loads_the_folder(flux_dir, tmp_path, capsys):
    ex.check_diffusers_shareable(...)
    assert "Not answered yet" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="not a saved pipeline folder"):
        ex.check_diffusers_shareable(tmp_path)
    with pytest.raises(AssertionError, match="'transformer' was saved unquantized"):
        ex.check_diffusers_shareable(_saved(flux_dir, tmp_path / "plain"))
    with pytest.raises(
        AssertionError, match="'text_encoder_2' is in quantkit's own format .* transformers cannot save quanto int8"
    ):
        ex.check_diffusers_shareable(_saved(flux_dir, tmp_path / "quanto", "quanto", weights_dtype="int8"))
    with pytest.raises(AssertionError, match="'transformer' is a .gguf file"):
        ex.check_diffusers_shareable(_saved(flux_dir, tmp_path / "gguf", "gguf", quant_type="Q8_0"))
    bnb = _saved(flux_dir, tmp_path / "bnb", "bitsandbytes_8bit", llm_int8_threshold=6.0)
    with pytest.raises(
        AssertionError,
        match="'transformer' is in bitsandbytes' format: diffusers' bitsandbytes loader refuses to run without a GPU",
    ):
        ex.check_diffusers_shareable(bnb)
    with pytest.raises(AssertionError, match="'transformer' is in bitsandbytes' format"):  # diffusers loads all
        ex.check_diffusers_shareable(bnb, components=("text_encoder_2",))
    bnb_t5 = _saved(flux_dir, tmp_path / "bnb-t5", "bitsandbytes_8bit", ["text_encoder_2"], llm_int8_threshold=6.0)
    ex.check_diffusers_shareable(bnb_t5, components=("text_encoder_2",))  # transformers' bitsandbytes runs on a CPU
    torchao = _saved(flux_dir, tmp_path / "torchao", "torchao", quant_type="int8wo")
    ex.check_diffusers_shareable(torchao)
    out = capsys.readouterr().out
    assert out.count("Correct!") == 2 and "transformer (torchao int8wo), text_encoder_2 (torchao int8wo)" in out
    with pytest.raises(AssertionError, match="The folder has no component 'text_encoder_3'"):
        ex.check_diffusers_shareable(torchao, components=("text_encoder_3",))


def test_diffusers_shareable_reports_what_diffusers_refuses(flux_dir, tmp_path):
    """diffusers' own refusal is the hint (here: its bitsandbytes loader on a machine without a GPU, for a learner who
    says the recipient has one), and a damaged folder is named as such; neither hint holds the machine's path."""
    import torch

    folder = _saved(flux_dir, tmp_path / "bnb", "bitsandbytes_8bit", ["transformer"], llm_int8_threshold=6.0)
    if not torch.cuda.is_available():
        with pytest.raises(
            AssertionError, match="diffusers alone could not load the folder: RuntimeError: No GPU found"
        ) as info:
            ex.check_diffusers_shareable(folder, components=("transformer",), device="cuda")
        assert str(tmp_path) not in str(info.value)
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AssertionError, match="The folder's files cannot be read: ValueError: <folder>/transformer"):
        ex.check_diffusers_shareable(folder, components=("transformer",), device="cuda")
