"""The comparison engine on a tiny FLUX pipeline: records, determinism, failures, resume, memory isolation.

One comparison (`first`) with a baseline, three quantized variants and one that cannot run on a CPU is run once
for the module; a second, identical one (`second`) in another folder checks that numbers and images repeat.
Every variant runs in its own worker process (2 steps, one prompt, two seeds).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantkit import EMBEDDED_PIPELINE, PipelineQuantizationConfig
from quantkit.comparison import (
    RESULTS_FILE,
    TIMING_FIELDS,
    CompareResults,
    compare,
    default_variants,
    read_records,
    read_variants,
    variants_to_dict,
)
from quantkit.comparison.runner import exit_message as _exit_message

PROMPTS = ["a red circle"]
SEEDS = [0, 1]
COMPONENTS = ["transformer", "text_encoder_2"]


def cfg(backend: str, **kwargs) -> PipelineQuantizationConfig:
    return PipelineQuantizationConfig(quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=COMPONENTS)


VARIANTS = {
    "baseline": None,
    "quanto-int8": cfg("quanto", weights_dtype="int8"),
    "torchao-int4wo": cfg("torchao", quant_type="int4wo"),  # no CPU kernels: must fail, and the rest go on
    "gguf-Q4_0": cfg("gguf", quant_type="Q4_0"),
    "quanto-int8-again": cfg("quanto", weights_dtype="int8"),  # the same work again: the same memory
}


def run(source, out, variants=VARIANTS, **kwargs):
    kwargs = {"prompts": PROMPTS, "seeds": SEEDS, "report": False, "progress": False, **kwargs}
    return compare(source, variants, out=out, **kwargs)


@pytest.fixture(scope="module")
def first(flux_dir, tmp_path_factory):
    return run(flux_dir, tmp_path_factory.mktemp("first"))


@pytest.fixture(scope="module")
def second(flux_dir, tmp_path_factory, first):
    return run(flux_dir, tmp_path_factory.mktemp("second"))


def test_every_variant_is_recorded_with_the_required_fields(first):
    lines = (first.folder / RESULTS_FILE).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["variant"] for r in records] == list(VARIANTS)  # one line each, baseline first
    for r in records:
        assert {"variant", "bytes", "latency_s", "psnr", "ssim", "error", "images"} <= set(r)
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) == 4
    for r in ok:
        assert r["bytes"] > 0 and r["latency_s"] > 0 and r["load_s"] > 0
        assert r["peak_load_rss"] > 0 and r["peak_gen_rss"] > 0
        assert len(r["images"]) == len(PROMPTS) * len(SEEDS)
        assert all((first.folder / p).is_file() for p in r["images"])
        assert r["environment"]["versions"]["torch"]
        assert set(r["component_bytes"]) >= set(COMPONENTS)
        assert len(r["latency_samples_s"]) == 3  # 2 images + 1 repeat to reach repeats=3


def test_quality_is_measured_against_the_baseline(first):
    frame = first.frame
    assert frame.loc["baseline", "psnr"] != frame.loc["baseline", "psnr"]  # NaN: the reference itself
    assert frame.loc["quanto-int8", "psnr"] > 40  # 8-bit weights: hardly visible
    assert 20 < frame.loc["gguf-Q4_0", "psnr"] < frame.loc["quanto-int8", "psnr"]  # 4-bit: more error
    assert 0.9 < frame.loc["gguf-Q4_0", "ssim"] <= frame.loc["quanto-int8", "ssim"] <= 1.0
    assert frame.loc["quanto-int8", "bytes"] < frame.loc["baseline", "bytes"]
    assert frame.loc["gguf-Q4_0", "bytes"] < frame.loc["quanto-int8", "bytes"]
    record = next(r for r in first.records if r["variant"] == "quanto-int8")
    assert record["reference"] == "baseline"
    # LPIPS runs only when its weights are on disk; when it does not, the record says so (exactly one holds)
    assert (record["lpips"] is None) == any("LPIPS skipped" in n for n in record["notes"])
    images = first.images
    assert images["baseline"].shape == (2, 32, 32, 3) and images["baseline"].dtype == np.float32


def test_a_failing_variant_is_recorded_and_the_others_complete(first):
    r = next(r for r in first.records if r["variant"] == "torchao-int4wo")
    assert r["status"] == "error" and r["error_type"] == "RuntimeError"
    assert r["error"].startswith("RuntimeError: Cannot quantize 'text_encoder_2' (T5EncoderModel) with torchao int4wo")
    assert "needs a CUDA GPU" in r["error"]
    assert r["bytes"] is None and r["images"] == [] and r["psnr"] is None
    assert first.failed == {"torchao-int4wo": r["error"]}
    after = [x["variant"] for x in first.records][3:]
    assert all(x["status"] == "ok" for x in first.records if x["variant"] in after)


def test_two_runs_give_the_same_numbers_and_images(first, second):
    def stable(record):
        return {k: v for k, v in record.items() if k not in TIMING_FIELDS}

    assert [stable(r) for r in first.records] == [stable(r) for r in second.records]
    for name, images in first.images.items():
        np.testing.assert_array_equal(images, second.images[name])
    cols = ["bytes", "psnr", "ssim", "adherence"]
    assert first.frame[cols].equals(second.frame[cols])


def test_memory_does_not_creep_across_variants(first):
    """Every worker starts from the same memory image, and the same work peaks at the same RSS.

    The report's peak_memory.png draws exactly these numbers (the flat line is `rss_start`)."""
    from quantkit.show.plots import plot_peak_memory

    frame = first.frame
    starts = frame["rss_start"]
    assert starts.max() - starts.min() < 4 * 2**20  # bytes: the same fresh process every time
    once, again = frame.loc["quanto-int8"], frame.loc["quanto-int8-again"]
    for col in ("peak_load_rss", "peak_gen_rss"):
        assert abs(once[col] - again[col]) < 0.05 * (once[col] - once["rss_start"]) + 4 * 2**20
    # the last variant does not start higher than the first: nothing accumulates
    assert frame["rss_start"].iloc[-1] <= frame["rss_start"].iloc[0] + 4 * 2**20
    fig = plot_peak_memory(frame)
    assert len(fig.axes) == 2


def test_rerun_on_the_same_folder_runs_nothing_and_duplicates_nothing(flux_dir, first):
    before = (first.folder / RESULTS_FILE).read_bytes()
    again = run(flux_dir, first.folder)
    assert (first.folder / RESULTS_FILE).read_bytes() == before
    assert [r["variant"] for r in again.records] == list(VARIANTS)


def test_resume_after_a_cut_line_and_with_a_new_variant(flux_dir, tmp_path):
    variants = {"baseline": None, "quanto-int8": VARIANTS["quanto-int8"]}
    run(flux_dir, tmp_path, variants)
    path = tmp_path / RESULTS_FILE
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # a crash in the middle of the second append
    assert [r["variant"] for r in read_records(tmp_path)] == ["baseline"]
    more = {**variants, "torchao-int8wo": cfg("torchao", quant_type="int8wo")}
    results = run(flux_dir, tmp_path, more)
    assert [r["variant"] for r in results.records] == ["baseline", "quanto-int8", "torchao-int8wo"]
    assert path.read_text().startswith(lines[0])  # the finished record was kept as it was
    assert all(r["status"] == "ok" for r in results.records)
    assert results.frame.loc["torchao-int8wo", "psnr"] > 40


def test_resume_refuses_other_settings_or_another_config_under_a_known_name(flux_dir, first):
    other_seeds = r"holds results made with other settings \(seeds: \[0, 1\] there, \[5\] now\)"
    with pytest.raises(ValueError, match=other_seeds):
        run(flux_dir, first.folder, seeds=[5])
    other = {"baseline": None, "quanto-int8": cfg("quanto", weights_dtype="float8")}
    with pytest.raises(ValueError, match="already holds a variant 'quanto-int8' made with another config"):
        run(flux_dir, first.folder, other)


def test_retry_failed_replaces_the_failed_record(flux_dir, first, tmp_path):
    import shutil

    shutil.copytree(first.folder, tmp_path / "copy")
    results = run(flux_dir, tmp_path / "copy", retry_failed=True)
    names = [r["variant"] for r in results.records]
    assert sorted(names) == sorted(VARIANTS) and len(names) == len(set(names))
    assert names[-1] == "torchao-int4wo"  # ran again (and failed again: still no CPU kernels)


def test_results_reload_from_the_folder_and_save_a_report(first, tmp_path):
    loaded = CompareResults.load(first.folder)
    assert loaded.frame.equals(first.frame)
    folder = loaded.save(tmp_path / "copy")
    for name in (
        "results.csv",
        "report.md",
        "report.html",
        "memory.png",
        "quality.png",
        "images.png",
        "peak_memory.png",
        RESULTS_FILE,
    ):
        assert (folder / name).is_file(), name
    report = (folder / "report.md").read_text()
    assert "| quanto-int8 |" in report and "![Quality against memory](quality.png)" in report
    assert "torchao-int4wo**: RuntimeError" in report
    assert "baseline" in repr(loaded) and "<table>" in loaded._repr_html_()


def test_bad_variants_are_refused_before_anything_runs(flux_dir, tmp_path):
    with pytest.raises(ValueError, match="variants must be a non-empty dict"):
        compare(flux_dir, {}, out=tmp_path)
    with pytest.raises(TypeError, match="Variant 'x' is a str; use a quantkit PipelineQuantizationConfig"):
        compare(flux_dir, {"x": "quanto"}, out=tmp_path)
    with pytest.raises(ValueError, match="map to the same folder name 'a-b'"):
        compare(flux_dir, {"a b": None, "a/b": None}, out=tmp_path)
    assert not (tmp_path / RESULTS_FILE).exists()


def test_a_baseline_is_added_when_none_is_given(flux_dir, tmp_path):
    results = run(flux_dir, tmp_path, {"quanto-int8": VARIANTS["quanto-int8"]}, seeds=[0])
    assert [r["variant"] for r in results.records] == ["baseline", "quanto-int8"]


def test_default_variants_cover_all_five_backends_on_transformer_and_t5(flux_dir):
    variants = default_variants(flux_dir)
    assert variants["baseline"] is None
    backends = {c.quant_backend for c in variants.values() if c is not None}
    assert backends == {"bitsandbytes_4bit", "bitsandbytes_8bit", "quanto", "torchao", "gguf"}
    assert all(c.components_to_quantize == COMPONENTS for c in variants.values() if c is not None)


def test_variants_file_round_trip(flux_dir, tmp_path):
    path = tmp_path / "variants.json"
    path.write_text(json.dumps(variants_to_dict(default_variants(flux_dir))))
    assert read_variants(path) == default_variants(flux_dir)
    path.write_text('{"x": {"quant_backend": "quanto", "quant_kwargs": {"weights_dtype": "int3"}}}')
    with pytest.raises(ValueError, match=r"Variant 'x' in .*weights_dtype='int3' is not supported"):
        read_variants(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a non-empty mapping"):
        read_variants(path)
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "variants.yaml"
    path.write_text(yaml.safe_dump(variants_to_dict(default_variants(flux_dir))))
    assert read_variants(path) == default_variants(flux_dir)


def test_a_dead_worker_is_described():
    assert _exit_message(-9, {}, None).startswith(
        "WorkerDied: the worker process was killed by SIGKILL (the kernel's out-of-memory killer sends SIGKILL)"
    )
    assert _exit_message(None, {"timed_out": True}, 5).startswith(
        "TimeoutError: the variant took longer than timeout_s=5 s"
    )


def test_a_variant_past_its_timeout_is_stopped_and_recorded(flux_dir, tmp_path):
    results = run(flux_dir, tmp_path, {"baseline": None}, timeout_s=0.05)
    (record,) = results.records
    assert record["status"] == "error" and record["error"].startswith("TimeoutError")


embedded = pytest.mark.skipif(
    not (EMBEDDED_PIPELINE / "model_index.json").is_file(),
    reason="the embedded pipeline has not been trained into the package yet",
)


@embedded
def test_on_the_embedded_pipeline_two_runs_match_and_adherence_is_scored(tmp_path):
    variants = {"baseline": None, "quanto-int8": VARIANTS["quanto-int8"]}
    kwargs = {"prompts": ["a red circle", "a blue square on the left"], "seeds": [0], "num_inference_steps": 8}
    a = run(None, tmp_path / "a", variants, **kwargs)
    b = run(None, tmp_path / "b", variants, **kwargs)

    def stable(record):
        return {k: v for k, v in record.items() if k not in TIMING_FIELDS}

    assert [stable(r) for r in a.records] == [stable(r) for r in b.records]
    for name, images in a.images.items():
        np.testing.assert_array_equal(images, b.images[name])
    frame = a.frame
    assert (frame["status"] == "ok").all(), a.failed
    assert frame["adherence"].notna().all()  # shapes prompts on the shapes pipeline: scored for every variant
    assert frame.loc["quanto-int8", "psnr"] > 30
