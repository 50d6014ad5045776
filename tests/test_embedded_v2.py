"""The training code of the embedded pipeline v2 ("tiny-flux-scenes"): reproducible; what it writes loads and draws.

Nothing here reads the shipped folder: test_embedded_scenes.py tests that."""

import json
from dataclasses import replace

import pytest
import torch

from quantkit.models import scene_scorer
from quantkit.models.scenes_train import SCENES_PRESETS, train_scenes


def test_smoke_training_is_reproducible_bit_for_bit(tmp_path):
    """Two runs of one config write the same bytes — the second in two parts: the VAE stage alone
    (`stop_after_vae`), then a run that takes that VAE (`vae_from`) and trains the rest."""
    first, vae_only, second = tmp_path / "first", tmp_path / "vae_only", tmp_path / "second"
    config = replace(SCENES_PRESETS["smoke"], decoder_steps=2)
    report = train_scenes(first, config, log=lambda message: None)
    assert set(report["timings_s"]) == {"data_and_build", "vae", "encode_latents", "flow", "decoder"}
    train_scenes(vae_only, config, log=lambda message: None, stop_after_vae=True)
    assert sorted(path.name for path in vae_only.iterdir()) == ["training_report.json", "vae"]
    report = train_scenes(second, config, log=lambda message: None, vae_from=vae_only)
    assert report["timings_s"]["vae"] == 0.0 and report["vae_from"] == str(vae_only)
    assert (
        report["vae_reconstruction_adherence"]
        == json.loads((first / "training_report.json").read_text())["vae_reconstruction_adherence"]
    )
    for name in ("vae", "transformer"):
        path = f"{name}/diffusion_pytorch_model.safetensors"
        assert (first / path).read_bytes() == (second / path).read_bytes(), name
    for name in ("text_encoder", "text_encoder_2"):  # trained too, so they must match as well
        path = f"{name}/model.safetensors"
        assert (first / path).read_bytes() == (second / path).read_bytes(), name
    assert (first / "tokenizer_2" / "spiece.model").is_file() or any((first / "tokenizer_2").iterdir())

    # a VAE trained with other settings, or a folder without one, is refused before any work
    with pytest.raises(ValueError, match=r"other settings \(vae_steps: 2 there, 3 here\); use the same settings"):
        train_scenes(tmp_path / "refused", replace(config, vae_steps=3), vae_from=vae_only)
    with pytest.raises(ValueError, match="holds no trained VAE.*--vae-only"):
        train_scenes(tmp_path / "refused", config, vae_from=tmp_path)
    with pytest.raises(ValueError, match="decoder was fine-tuned.*--vae-only"):
        train_scenes(tmp_path / "refused", config, vae_from=first)
    with pytest.raises(ValueError, match=r"vae_edge_weight: 0.0 there, 8.0 here"):
        train_scenes(tmp_path / "refused", replace(config, vae_edge_weight=8.0), vae_from=vae_only)
    assert not (tmp_path / "refused").exists()
    # a report written before a VAE field existed holds none: the field's default is what that run used
    from quantkit.models.scenes_train import _vae_source_report

    saved = json.loads((vae_only / "training_report.json").read_text())
    del saved["config"]["vae_edge_weight"]
    (vae_only / "training_report.json").write_text(json.dumps(saved))
    assert _vae_source_report(vae_only, config)["config"] == saved["config"]
    with pytest.raises(ValueError, match=r"vae_edge_weight: 0.0 there, 8.0 here"):
        _vae_source_report(vae_only, replace(config, vae_edge_weight=8.0))


def test_smoke_output_reloads_and_draws_64_px(tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    from quantkit.models.defaults import apply_generation_defaults, read_generation_defaults

    out = tmp_path / "smoke"
    threads = torch.get_num_threads()
    report = train_scenes(out, replace(SCENES_PRESETS["smoke"], flow_threads=1), log=lambda message: None)
    assert report["config"]["flow_threads"] == 1 and torch.get_num_threads() == threads  # restored after the flow
    pipe = DiffusionPipeline.from_pretrained(out)
    apply_generation_defaults(pipe, read_generation_defaults(out))
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    scene_scorer.score_scene(image, "a red circle")  # scores any image without error

    from quantkit.models import scenes_eval

    monkeypatch.setitem(scenes_eval.ORDER_PAIRS, "same", ("a red circle", "a red circle"))
    order = scenes_eval.order_sensitivity(pipe)
    assert order["same"] == 0.0 and order["same_text"] == 0.0  # one prompt twice: no distance
    assert order["axis"] > 0 and order["left_right_text"] > 0  # different words: the encoders and the velocity move

    from quantkit.models.scenes_continue import continue_flow

    vae_before = (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    transformer_before = (out / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    report = continue_flow(out, 2, log=lambda message: None)
    assert [r["steps"] for r in report["flow_continuations"]] == [2]
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == vae_before  # the VAE is kept
    assert (out / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes() != transformer_before
    again = DiffusionPipeline.from_pretrained(out)
    apply_generation_defaults(again, read_generation_defaults(out))
    again.set_progress_bar_config(disable=True)
    assert again("a red circle", num_inference_steps=2).images[0].size == (64, 64)
    with pytest.raises(ValueError, match="whole number >= 1"):
        continue_flow(out, 0)


def test_weighted_mse_counts_object_pixels_more():
    import torch

    from quantkit.models.training import weighted_mse

    target = torch.full((1, 3, 8, 8), 0.8)  # light background
    target[:, :, 2:4, 2:4] = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)  # a red object, 4 of 64 pixels
    on_object = target.clone()
    on_object[:, :, 2:4, 2:4] = 0.8  # the object lost
    on_background = target.clone()
    on_background[:, :, 5:7, 5:7] = -0.2  # an error on 4 background pixels
    plain = torch.nn.functional.mse_loss
    assert float(weighted_mse(on_object, target, 1.0)) == pytest.approx(float(plain(on_object, target)))
    plain_ratio = float(plain(on_object, target)) / float(plain(on_background, target))
    ratio = float(weighted_mse(on_object, target, 8.0)) / float(weighted_mse(on_background, target, 8.0))
    assert ratio == pytest.approx(8.0 * plain_ratio)


def test_weighted_mse_edge_weight_counts_outline_pixels_more():
    """An error on an object's outline (where the scorer tells a square from a circle) costs `edge_weight` more
    than the same error inside the object; without it the two cost the same."""
    import torch

    from quantkit.models.training import weighted_mse

    target = torch.full((1, 3, 12, 12), 0.8)
    target[:, :, 3:9, 3:9] = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)  # a 6×6 red square
    corner, inside = target.clone(), target.clone()
    corner[:, :, 3, 3:7] = 0.8  # the top edge worn down: 4 outline pixels lost
    inside[:, :, 5, 4:8] = 0.8  # 4 pixels lost in the middle, more than 1 px from the outline
    assert float(weighted_mse(corner, target, 8.0)) == pytest.approx(float(weighted_mse(inside, target, 8.0)))
    ratio = float(weighted_mse(corner, target, 8.0, 8.0)) / float(weighted_mse(inside, target, 8.0, 8.0))
    assert ratio == pytest.approx((8.0 + 8.0) / 8.0)


def test_the_card_says_how_the_vae_loss_was_weighted():
    from quantkit.models.model_card_scenes import _vae_weights

    assert _vae_weights({"vae_fg_weight": 8.0, "vae_edge_weight": 8.0}) == " (object pixels × 8, outlines + 8)"
    assert _vae_weights({"vae_fg_weight": 8.0}) == " (object pixels × 8)"  # a report from before outlines
    assert _vae_weights({}) == ""  # plain MSE


def test_the_cards_quantization_table_has_intervals_and_failed_rows():
    from quantkit.models.model_card_scenes import quantization_table

    ok = {
        "status": "ok",
        "bytes": 41.5e6,
        "psnr": 31.25,
        "psnr_ci": [30.5, 32.0],
        "ssim": 0.9,
        "ssim_ci": [0.88, 0.92],
    }
    ok["adherence_all"] = {"shape": 0.8, "shape_ci": [0.7, 0.9], "all": 0.75, "all_ci": [0.65, 0.85]}
    ok["adherence_two"] = {"all": 0.5, "all_ci": [0.4, 0.6]}
    table = quantization_table(
        {"variants": {"quanto-int8 transformer": ok, "gguf-Q4_0 text encoders": {"status": "failed", "error": "boom"}}}
    )
    row, failed = [line for line in table.splitlines() if "transformer" in line or "text encoders" in line]
    assert "| 41.5 |" in row and "80% [70%, 90%]" in row and "50% [40%, 60%]" in row and "31.2 [30.5, 32.0]" in row
    assert "| – |" in row  # an attribute without a value (relation here) is a dash, not 0%
    assert "failed" in failed


def test_evaluate_only_flags_set_the_generation_defaults_for_both_pipelines():
    """`--num-inference-steps` / `--true-cfg-scale` with `--evaluate-only` (v2 ignored them before)."""
    import importlib.util
    from argparse import Namespace
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "train_embedded.py"
    spec = importlib.util.spec_from_file_location("train_embedded_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    base = {"num_inference_steps": 20, "max_sequence_length": 16}
    guided = script.new_defaults(base, Namespace(num_inference_steps=None, true_cfg_scale=2.0))
    assert guided == {**base, "true_cfg_scale": 2.0, "negative_prompt": ""}  # CFG runs only with a negative prompt
    plain = script.new_defaults(guided, Namespace(num_inference_steps=28, true_cfg_scale=1.0))
    assert plain == {**base, "num_inference_steps": 28}
    assert script.new_defaults(base, Namespace(num_inference_steps=None, true_cfg_scale=None)) == base


def test_latent_cell_weights_mark_the_cells_an_object_covers():
    """A 6×6 object at pixels 10..15 of a 32-px image touches latent cells 1 (pixels 8..15) only, at 8 px per
    cell; one at 14..19 straddles cells 1 and 2. Those cells get the weight, every other cell 1."""
    import numpy as np

    from quantkit.models.training import latent_cell_weights

    images = np.full((2, 32, 32, 3), 230, dtype=np.uint8)
    images[0, 10:16, 10:16] = (200, 30, 30)
    images[1, 14:20, 14:20] = (30, 30, 200)
    weights = latent_cell_weights(images, 8, 4.0)
    assert weights.shape == (2, 1, 4, 4)
    expected = torch.ones(2, 1, 4, 4)
    expected[0, 0, 1, 1] = 4.0
    expected[1, 0, 1:3, 1:3] = 4.0
    assert torch.equal(weights, expected)


def watch_flow_timesteps(monkeypatch, seen: list) -> None:
    """Make `scenes_train.build_scenes_pipeline` hook its transformer so `seen` gets every call's `timestep` (σ)."""
    from quantkit.models import scenes_train

    built = scenes_train.build_scenes_pipeline

    def build_and_watch(*args, **kwargs):
        pipe = built(*args, **kwargs)
        pipe.transformer.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(kwargs["timestep"].clone()), with_kwargs=True
        )
        return pipe

    monkeypatch.setattr(scenes_train, "build_scenes_pipeline", build_and_watch)


@pytest.fixture(scope="module")
def plain_smoke(tmp_path_factory):
    """The smoke preset trained once for this module: (folder, report, σ of its flow steps, one row per step)."""
    folder = tmp_path_factory.mktemp("plain-smoke")
    seen: list[torch.Tensor] = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        watch_flow_timesteps(monkeypatch, seen)
        report = train_scenes(folder, SCENES_PRESETS["smoke"], log=lambda message: None)
    return folder, report, torch.stack(seen[: SCENES_PRESETS["smoke"].transformer_steps])


TRANSFORMER_FILE = "transformer/diffusion_pytorch_model.safetensors"


def test_flow_fg_weight_reaches_the_flow_loss(tmp_path, plain_smoke):
    """Weight 1 is the plain MSE (no weight maps built); another weight trains a different transformer."""
    from quantkit.models.scenes_train import build_scenes_pipeline, flow_cell_weights

    config = SCENES_PRESETS["smoke"]
    assert flow_cell_weights(build_scenes_pipeline(0), None, config) is None
    plain_folder, plain, _ = plain_smoke
    weighted = train_scenes(tmp_path / "weighted", replace(config, flow_fg_weight=4.0), log=lambda message: None)
    assert (plain_folder / TRANSFORMER_FILE).read_bytes() != (tmp_path / "weighted" / TRANSFORMER_FILE).read_bytes()
    assert plain["transformer_loss_first"] != weighted["transformer_loss_first"]


@pytest.mark.parametrize(
    "setting, layer, weights_file, loss",
    [
        ("flow_bf16", lambda pipe: pipe.transformer.proj_out, TRANSFORMER_FILE, "transformer_loss_first"),
        (
            "vae_bf16",
            lambda pipe: pipe.vae.decoder.conv_out,
            "vae/diffusion_pytorch_model.safetensors",
            "vae_final_loss",
        ),
    ],
)
def test_bf16_stage_computes_in_bfloat16_and_keeps_float32_weights(
    tmp_path, plain_smoke, monkeypatch, setting, layer, weights_file, loss
):
    """flow_bf16 / vae_bf16: the stage's model computes in bfloat16 while it trains (seen by a forward hook on its
    last layer), the saved weights stay float32, and the loss stays close to the float32 run's."""
    from safetensors import safe_open

    from quantkit.models import scenes_train

    built = scenes_train.build_scenes_pipeline
    seen: set[torch.dtype] = set()

    def build_and_watch(*args, **kwargs):
        pipe = built(*args, **kwargs)
        layer(pipe).register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
        return pipe

    monkeypatch.setattr(scenes_train, "build_scenes_pipeline", build_and_watch)
    half = train_scenes(tmp_path, replace(SCENES_PRESETS["smoke"], **{setting: True}), log=lambda message: None)
    assert torch.bfloat16 in seen
    with safe_open(tmp_path / weights_file, "pt") as f:
        assert {f.get_slice(name).get_dtype() for name in f.keys()} == {"F32"}
    # same seeds, same data: the loss differs only by bfloat16 rounding (relative, 5%)
    assert half[loss] == pytest.approx(plain_smoke[1][loss], rel=0.05)


def test_flow_compile_sends_every_flow_step_through_torch_compile(tmp_path, plain_smoke, monkeypatch):
    """flow_compile: the transformer is handed to torch.compile and every flow step's forward goes through what it
    returns. torch.compile is replaced by a counting pass-through (a real compile takes minutes on 2 cores: the
    speed-up is measured by the training runs in the preset comments), so the run must equal the plain one exactly
    and save the same weights."""
    from diffusers import FluxTransformer2DModel

    compiled, calls = [], []

    def counting_compile(module):
        compiled.append(module)

        def forward(*args, **kwargs):
            calls.append(1)
            return module(*args, **kwargs)

        return forward

    monkeypatch.setattr(torch, "compile", counting_compile)
    config = replace(SCENES_PRESETS["smoke"], flow_compile=True)
    report = train_scenes(tmp_path, config, log=lambda message: None)
    assert len(compiled) == 1 and isinstance(compiled[0], FluxTransformer2DModel)
    assert len(calls) == config.transformer_steps
    plain_folder, plain, _ = plain_smoke
    assert report["transformer_loss_last"] == plain["transformer_loss_last"]
    assert (tmp_path / TRANSFORMER_FILE).read_bytes() == (plain_folder / TRANSFORMER_FILE).read_bytes()


def test_flow_logit_mean_moves_every_drawn_noise_level_toward_the_clean_end(tmp_path, plain_smoke, monkeypatch):
    """flow_logit_mean shifts the logit-normal before the same random draws: with the same seed, every σ the
    transformer is trained at (its `timestep` argument) is lower than in the run at mean 0."""
    seen: list[torch.Tensor] = []
    watch_flow_timesteps(monkeypatch, seen)
    smoke = SCENES_PRESETS["smoke"]
    train_scenes(tmp_path, replace(smoke, flow_logit_mean=-1.0), log=lambda message: None)
    shifted, plain = torch.stack(seen[: smoke.transformer_steps]), plain_smoke[2]
    assert shifted.shape == plain.shape == (smoke.transformer_steps, smoke.batch_size)
    assert bool((shifted < plain).all())


def test_flow_compile_without_a_cpp_compiler_fails_before_any_stage(tmp_path, monkeypatch):
    """No compiler on PATH: train_scenes raises at once, names both fixes, and writes nothing."""
    import shutil

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    out = tmp_path / "run"
    with pytest.raises(
        RuntimeError, match=r"flow_compile=True .*'g\+\+' is not on PATH.*apt install g\+\+.*flow_compile=False"
    ):
        train_scenes(out, replace(SCENES_PRESETS["smoke"], flow_compile=True), log=lambda message: None)
    assert not out.exists()
