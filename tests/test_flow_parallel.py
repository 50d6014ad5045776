"""The data-parallel flow stage (`quantkit.models.flow_parallel`): gradient averaging across processes, the
ranks' agreement, and its checks before any process starts."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from quantkit.models.flow_parallel import check_ranks
from quantkit.models.scenes_train import SCENES_PRESETS, train_scenes


def _average_in_rank(rank: int, folder: str) -> None:
    import torch.distributed as dist

    from quantkit.models.training import average_gradients

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        a, b, unused = torch.zeros(3, requires_grad=True), torch.zeros(2, 2, requires_grad=True), torch.zeros(1)
        unused.requires_grad_(True)
        a.grad = torch.full((3,), float(rank + 1))  # rank 0: 1, rank 1: 2 -> mean 1.5
        b.grad = torch.full((2, 2), 10.0 * rank)  # 0 and 10 -> 5
        average_gradients([a, b, unused], world=2)  # `unused` has no gradient on either rank: zeros
        torch.save([a.grad, b.grad, unused.grad], Path(folder) / f"grads{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_average_gradients_gives_every_rank_the_mean_of_the_ranks_gradients():
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_average_in_rank, args=(folder,), nprocs=2)
        results = [torch.load(Path(folder) / f"grads{rank}.pt") for rank in range(2)]
    for a, b, unused in results:
        assert torch.equal(a, torch.full((3,), 1.5))
        assert torch.equal(b, torch.full((2, 2), 5.0)) and b.shape == (2, 2)
        assert torch.equal(unused, torch.zeros(1))


@pytest.mark.parametrize(
    ("ranks", "batch", "message"),
    [
        (0, 32, r"flow_ranks must be a whole number >= 1, got 0"),
        (True, 32, r"got True"),
        (3, 32, r"flow_ranks=3 does not divide batch_size=32.*multiple of 3 \(e\.g\. 30\)"),
    ],
)
def test_check_ranks_names_the_fix(ranks, batch, message):
    with pytest.raises(ValueError, match=message):
        check_ranks(ranks, batch)


def test_train_scenes_checks_flow_ranks_before_any_stage(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="does not divide batch_size=4"):
        train_scenes(out, replace(SCENES_PRESETS["smoke"], flow_ranks=3), log=lambda message: None)
    assert not out.exists()


def test_smoke_run_on_two_ranks_trains_and_saves_one_agreed_model(tmp_path):
    """Two processes train the smoke preset; the parent has compared their final weights (it raises when they
    differ) and saved rank 0's: the transformer moved away from its initial weights."""
    from safetensors.torch import load_file

    from quantkit.models.scenes_train import build_scenes_pipeline

    report = train_scenes(tmp_path, replace(SCENES_PRESETS["smoke"], flow_ranks=2), log=lambda message: None)
    assert report["flow_ranks"] == 2
    assert torch.isfinite(torch.tensor(report["transformer_loss_last"]))
    saved = load_file(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    initial = build_scenes_pipeline(0).transformer.state_dict()
    moved = [name for name, weight in saved.items() if not torch.equal(weight, initial[name])]
    assert len(moved) > len(saved) // 2


def _script():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "train_embedded.py"
    spec = importlib.util.spec_from_file_location("train_embedded_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_train_embedded_flow_ranks_flag_is_checked_before_training(tmp_path, capsys):
    """`--flow-ranks` reaches the v2 config (a bad value stops the run before any stage, with the fix named) and
    is refused for v1, which has no such stage."""
    script = _script()
    with pytest.raises(SystemExit, match=r"error: flow_ranks=3 does not divide batch_size=4"):
        script.main(["--pipeline", "scenes", "--preset", "smoke", "--flow-ranks", "3", "--out", str(tmp_path / "v2")])
    assert not (tmp_path / "v2").exists()
    with pytest.raises(SystemExit) as stopped:
        script.main(["--smoke", "--flow-ranks", "2"])
    assert stopped.value.code == 2 and "--flow-ranks is for --pipeline scenes" in capsys.readouterr().err
