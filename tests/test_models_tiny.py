"""Tiny random-weight pipelines: build, save, reload offline through `from_pretrained`, generate."""

import json

import numpy as np
import pytest
import torch

from quantkit.models.tiny import (
    LAYOUTS,
    build_clip_tokenizer,
    build_t5_tokenizer,
    build_tiny_pipeline,
    nonconforming_linears,
    save_tiny_pipeline,
    tiny_generation_defaults,
)

EXPECTED_CLASSES = {
    "flux": ("FluxPipeline", "FluxTransformer2DModel"),
    "sd3": ("StableDiffusion3Pipeline", "SD3Transformer2DModel"),
    "pixart": ("PixArtSigmaPipeline", "PixArtTransformer2DModel"),
}


@pytest.fixture(scope="module", params=LAYOUTS)
def saved(request, tmp_path_factory):
    layout = request.param
    return layout, save_tiny_pipeline(tmp_path_factory.mktemp(layout) / "pipe", layout=layout, seed=0)


def test_reload_and_generate(saved):
    from diffusers import DiffusionPipeline

    layout, path = saved
    pipe = DiffusionPipeline.from_pretrained(path)
    pipeline_class, transformer_class = EXPECTED_CLASSES[layout]
    assert type(pipe).__name__ == pipeline_class
    assert type(pipe.transformer).__name__ == transformer_class
    kwargs = tiny_generation_defaults(layout)
    image = pipe("a red circle", generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images
    assert image.shape == (1, 32, 32, 3)
    assert np.isfinite(image).all()
    # saved defaults are the ones the function documents
    assert json.loads((path / "generation_defaults.json").read_text()) == kwargs


def test_size_and_linear_shapes(saved):
    layout, path = saved
    total = sum(f.stat().st_size for f in path.rglob("*.safetensors"))
    assert 0.5e6 < total < 15e6, total
    # every Linear fits bitsandbytes' 4-bit CPU kernel (in % 64, out % 32)
    assert nonconforming_linears(build_tiny_pipeline(layout)) == []


def test_nonconforming_linears_reports_offenders():
    pipe = build_tiny_pipeline("flux")
    pipe.transformer.x_embedder = torch.nn.Linear(16, 64)
    assert nonconforming_linears(pipe) == [
        {"component": "transformer", "name": "x_embedder", "in_features": 16, "out_features": 64}
    ]


def test_deterministic_for_a_seed(tmp_path):
    a = save_tiny_pipeline(tmp_path / "a", "flux", seed=3)
    b = save_tiny_pipeline(tmp_path / "b", "flux", seed=3)
    c = build_tiny_pipeline("flux", seed=4)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        files_a = sorted((a / name).glob("*.safetensors"))
        assert files_a and [f.read_bytes() for f in files_a] == [
            f.read_bytes() for f in sorted((b / name).glob("*.safetensors"))
        ]
    w3 = build_tiny_pipeline("flux", seed=3).transformer.x_embedder.weight
    assert not torch.equal(w3, c.transformer.x_embedder.weight)


def test_dtype():
    pipe = build_tiny_pipeline("flux", torch_dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.text_encoder_2.dtype == torch.bfloat16


def test_unknown_layout_message():
    with pytest.raises(ValueError, match=r"Unknown layout 'sdxl'; choose one of 'flux', 'sd3', 'pixart'"):
        build_tiny_pipeline("sdxl")


def test_clip_tokenizer_wraps_prompt_and_pooled_output_differs():
    tokenizer = build_clip_tokenizer()
    ids = tokenizer("a small red circle on the left").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == 9  # one token per word + BOS + EOS
    pipe = build_tiny_pipeline("flux")
    with torch.no_grad():
        _, pooled, _ = pipe.encode_prompt(["a red circle", "a blue square"], prompt_2=None, max_sequence_length=16)
    assert not torch.allclose(pooled[0], pooled[1])


def test_t5_tokenizer_words_and_eos():
    tokenizer = build_t5_tokenizer()
    ids = tokenizer("a purple triangle at the bottom").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["▁a", "▁purple", "▁triangle", "▁at", "▁the", "▁bottom", "</s>"]
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)


# --- generation defaults (quantkit.models.defaults) ------------------------------------------------------------


def test_generation_defaults_fill_missing_kwargs_and_explicit_wins(tmp_path):
    from diffusers import DiffusionPipeline, FluxPipeline

    from quantkit.models.defaults import apply_generation_defaults, read_generation_defaults

    path = save_tiny_pipeline(tmp_path / "flux", "flux")
    pipe = DiffusionPipeline.from_pretrained(path)
    defaults = read_generation_defaults(path)
    assert defaults == tiny_generation_defaults("flux")
    apply_generation_defaults(pipe, {**defaults, "output_type": "np"})
    assert isinstance(pipe, FluxPipeline) and type(pipe).__name__ == "FluxPipeline"
    plain = pipe("a red circle", generator=torch.Generator().manual_seed(0)).images
    assert plain.shape == (1, 32, 32, 3)  # without defaults FluxPipeline would draw 128·4 = 512 px
    explicit = pipe("a red circle", height=64, width=64, generator=torch.Generator().manual_seed(0)).images
    assert explicit.shape == (1, 64, 64, 3)
    same = pipe("a red circle", generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_array_equal(plain, same)


def test_generation_defaults_survive_save_pretrained(tmp_path):
    from diffusers import DiffusionPipeline, FluxPipeline

    from quantkit.models.defaults import apply_generation_defaults, read_generation_defaults

    pipe = apply_generation_defaults(build_tiny_pipeline("flux"), {"height": 32, "num_inference_steps": 3})
    apply_generation_defaults(pipe, {"height": 32, "width": 32, "num_inference_steps": 3})  # twice: no stacking
    assert type(pipe).__mro__[1] is FluxPipeline
    pipe.save_pretrained(tmp_path / "out")
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert read_generation_defaults(tmp_path / "out") == {"height": 32, "width": 32, "num_inference_steps": 3}
    assert type(DiffusionPipeline.from_pretrained(tmp_path / "out")) is FluxPipeline


def test_generation_defaults_errors_and_missing_file(tmp_path):
    from quantkit.models.defaults import apply_generation_defaults, read_generation_defaults

    assert read_generation_defaults(tmp_path) == {}
    (tmp_path / "generation_defaults.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object of call kwargs, got list"):
        read_generation_defaults(tmp_path)
    with pytest.raises(TypeError, match="defaults must be a dict of call kwargs, got str"):
        apply_generation_defaults(build_tiny_pipeline("flux"), "height=32")


def test_import_quantkit_models_stays_light():
    import subprocess
    import sys

    heavy = "('torch', 'diffusers', 'transformers')"
    code = f"import sys, quantkit.models; print(sorted(m for m in {heavy} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
