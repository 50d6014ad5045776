"""compare's engine: on_record and stop, one settings object validated before anything runs."""

from __future__ import annotations

import threading

import pytest

from quantkit import PipelineQuantizationConfig
from quantkit.comparison import CompareSettings, VariantRecord, compare, read_records

FAST = {
    "prompts": ["a red circle"],
    "seeds": [0],
    "warmup": 0,
    "repeats": 1,
    "num_inference_steps": 2,
    "report": False,
    "progress": False,
    "use_lpips": False,
}
QUANTO = PipelineQuantizationConfig(
    quant_backend="quanto", quant_kwargs={"weights_dtype": "int8"}, components_to_quantize=["transformer"]
)


def test_on_record_sees_each_finished_variant_in_order(flux_dir, tmp_path):
    seen: list[VariantRecord] = []
    results = compare(flux_dir, {"baseline": None, "q8": QUANTO}, out=tmp_path, on_record=seen.append, **FAST)
    assert [r.variant for r in seen] == ["baseline", "q8"]
    assert all(r.ok and r.error is None for r in seen)
    assert seen[1]["bytes"] == results.frame.loc["q8", "bytes"] and seen[1].get("psnr") > 30
    # called after the line is on disk: a callback that reads the folder sees its own record
    assert [r["variant"] for r in read_records(tmp_path)] == ["baseline", "q8"]


def test_stop_ends_the_run_after_the_variant_that_set_it(flux_dir, tmp_path):
    stop = threading.Event()
    variants = {"baseline": None, "q8": QUANTO, "q8-again": QUANTO}
    results = compare(flux_dir, variants, out=tmp_path, stop=stop, on_record=lambda r: stop.set(), **FAST)
    assert [r["variant"] for r in results.records] == ["baseline"]  # no other variant started
    # a rerun without the stop resumes: the baseline is not run again
    again = compare(flux_dir, variants, out=tmp_path, **FAST)
    assert [r["variant"] for r in again.records] == ["baseline", "q8", "q8-again"]
    assert again.records[0]["finished_at"] == results.records[0]["finished_at"]


def test_stop_set_while_a_worker_runs_records_nothing_for_it(flux_dir, tmp_path):
    stop = threading.Event()
    slow = {**FAST, "repeats": 200}  # long enough that the stop lands while the worker draws
    timer = threading.Timer(3.0, stop.set)
    timer.start()
    try:
        results = compare(flux_dir, {"baseline": None}, out=tmp_path, stop=stop, **slow)
    finally:
        timer.cancel()
    assert results.records == []
    assert not (tmp_path / ".work").exists()
    assert read_records(tmp_path) == [] and not (tmp_path / "images").exists()


def test_settings_object_and_options_are_the_same(flux_dir, tmp_path):
    settings = CompareSettings(
        prompts=["a red circle"],
        seeds=[0],
        num_inference_steps=2,
        warmup=0,
        repeats=1,
        report=False,
        progress=False,
        use_lpips=False,
    )
    results = compare(flux_dir, {"baseline": None}, settings, out=tmp_path)
    assert results.meta["settings"]["call_kwargs"] == {"num_inference_steps": 2}
    assert CompareSettings.from_options(settings, seeds=[3]).seeds == [3]


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"prompts": "a red circle"}, TypeError, "for one prompt write prompts=['a red circle']"),
        ({"prompts": []}, ValueError, "non-empty list"),
        ({"seeds": 3}, TypeError, "seeds must be a list of whole numbers"),
        ({"seeds": [-1]}, ValueError, "each seed=-1 is out of range"),
        ({"seeds": [2**64]}, ValueError, "out of range"),
        ({"num_inference_steps": 0}, ValueError, "num_inference_steps=0 is out of range: it must be from 1"),
        ({"repeats": 0}, ValueError, "repeats=0 is out of range"),
        ({"warmup": 1.5}, TypeError, "warmup must be a whole number"),
        ({"keep_sensitive": -1}, ValueError, "keep_sensitive=-1 is out of range: it must be >= 0"),
        ({"timeout_s": 0}, ValueError, "timeout_s=0 must be a finite number of seconds > 0"),
        ({"timeout_s": float("nan")}, ValueError, "finite"),
        ({"device": "gpu"}, ValueError, "device='gpu' is not a device name"),
        ({"torch_dtype": "int8"}, ValueError, "Unsupported dtype 'int8'"),
        ({"start_method": "thread"}, ValueError, "start_method='thread' is not available here"),
        ({"call_kwargs": {"x": object()}}, TypeError, "call_kwargs must be JSON-able"),
        ({"retry_failed": "yes"}, TypeError, "retry_failed must be True or False"),
        ({"seed": [0]}, TypeError, "unknown option 'seed'. Did you mean 'seeds'?"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_settings_are_refused_before_a_folder_is_made(flux_dir, tmp_path, options, error, words):
    out = tmp_path / "never-made"
    with pytest.raises(error) as info:
        compare(flux_dir, {"baseline": None}, out=out, **{**FAST, **options})
    assert words in str(info.value)
    assert not out.exists()


def test_a_device_this_machine_lacks_is_refused_before_a_folder_is_made(flux_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "never-made"
    with pytest.raises(RuntimeError, match="device='cuda' needs a CUDA GPU, but this machine has"):
        compare(flux_dir, {"baseline": None}, out=out, device="cuda", **FAST)
    assert not out.exists()


def test_an_out_that_is_a_file_is_a_clear_error(flux_dir, tmp_path):
    file = tmp_path / "results.txt"
    file.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        compare(flux_dir, {"baseline": None}, out=file, **FAST)


def test_strict_stops_at_the_first_failure(flux_dir, tmp_path):
    bad = PipelineQuantizationConfig(
        quant_backend="torchao", quant_kwargs={"quant_type": "int4wo"}, components_to_quantize=["transformer"]
    )
    with pytest.raises(RuntimeError, match="Variant 'int4' failed: RuntimeError: Cannot quantize 'transformer'"):
        compare(flux_dir, {"baseline": None, "int4": bad, "q8": QUANTO}, out=tmp_path, strict=True, **FAST)
    assert [r["variant"] for r in read_records(tmp_path)] == ["baseline", "int4"]  # recorded, then stopped


def test_a_comparison_without_out_leaves_no_folder_behind(flux_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import quantkit as qk, sys; r = qk.compare(sys.argv[1], {'baseline': None}, prompts=['a red circle'], "
        "seeds=[0], warmup=0, repeats=1, num_inference_steps=2, report=False, progress=False, use_lpips=False); "
        "print(r.folder, len(r.records))"
    )
    root = Path(__file__).resolve().parent.parent
    tmp_path = tmp_path / ("deep" * 20)  # too long for the fork server's socket (runner._short_socket_dir)
    tmp_path.mkdir()
    env = {**os.environ, "PYTHONPATH": str(root), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(flux_dir)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    folder, n = done.stdout.split()[-2:]
    assert n == "1" and Path(folder).parent == tmp_path  # the results were there while the process ran
    assert not Path(folder).exists()  # and went with it (pass out= to keep them)
    assert "spawn' instead" not in done.stderr  # the fork server started, with its socket in a short folder


def test_a_fork_server_that_cannot_bind_its_socket_falls_back_to_spawn_and_says_why(monkeypatch):
    from multiprocessing import forkserver

    from quantkit.comparison import runner

    def too_long():
        raise OSError("AF_UNIX path too long")

    monkeypatch.setattr(runner, "_short_socket_dir", lambda: None)
    monkeypatch.setattr(forkserver, "ensure_running", too_long)
    with pytest.warns(RuntimeWarning, match=r"TMPDIR .* too long .* 'spawn' instead"):
        ctx = runner.context(None, "cpu")
    assert ctx.get_start_method() == "spawn"
    monkeypatch.setattr(forkserver, "ensure_running", lambda: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):  # any other error is not swallowed
        runner.context(None, "cpu")
