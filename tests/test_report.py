"""The comparison report reads itself: rendered Markdown (no raw `**` or backticks in the HTML), a summary at the
top that names the right variants from the numbers, and units named once (KiB / MiB / GiB).

The results folder is written by hand here (results.jsonl + meta.json in the format quantkit.compare writes), with
the figures of a real run of the embedded pipeline on a 2-core CPU, so nothing is run: about 3 s.
"""

from __future__ import annotations

import json
import re

import pytest

from quantkit.comparison import CompareResults
from quantkit.units import GiB, KiB, MiB, human_bytes

ENV = {"python": "3.11.7", "versions": {"quantkit": "0.1.0", "torch": "2.13.0+cpu"}, "cpu": "AMD EPYC",
       "cpu_count": 2, "torch_threads": 2, "device": "cpu", "device_name": "AMD EPYC"}  # fmt: skip
COMPONENTS = {"vae": 2_681_484, "text_encoder": 418_432}

# variant: (config, bytes of text_encoder_2 + transformer, latency s, PSNR dB, peak RSS while generating)
RUN = {
    "baseline": (None, 9_576_000, 0.376, None, 510_050_304),
    "bnb-nf4": ("bitsandbytes_4bit", 1_470_528, 0.489, 29.88, 508_862_464),
    "bnb-int8": ("bitsandbytes_8bit", 2_559_808, 1.106, 54.94, 510_488_576),
    "quanto-int8": ("quanto", 2_511_760, 0.595, 56.29, 509_067_264),
    "gguf-Q8_0": ("gguf", 2_645_568, 0.611, 56.77, 504_692_736),
    "gguf-Q4_0": ("gguf", 1_465_920, 0.841, 31.28, 503_836_672),
}


def record(name, backend, quantized_bytes, latency, psnr, peak) -> dict:
    config = None if backend is None else {"quant_backend": backend, "components_to_quantize": ["transformer"]}
    component_bytes = {**COMPONENTS, "transformer": quantized_bytes}
    return {
        "variant": name, "config": config, "status": "ok", "error": None, "device": "cpu",
        "rss_start": 409_468_928, "load_s": 0.3, "bytes": sum(component_bytes.values()),
        "component_bytes": component_bytes, "quantization": "-" if backend is None else f"{backend} (transformer)",
        "latency_s": latency, "psnr": psnr, "ssim": None if psnr is None else 0.99, "adherence": 1.0,
        "peak_load_rss": peak - 60 * MiB, "peak_gen_rss": peak, "images": [], "images_npy": None,
        "environment": ENV, "reference": None if backend is None else "baseline",
    }  # fmt: skip


def write_folder(folder, run=RUN, extra=()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"format": 1, "source": "/x/tiny-flux-shapes", "prompts": ["a red circle", "a *bold* _word_"],
                "seeds": [0, 1], "call_kwargs": {}, "device": "cpu", "torch_dtype": None}  # fmt: skip
    (folder / "meta.json").write_text(json.dumps({"settings": settings, "host": ENV}))
    lines = [json.dumps(record(name, *values)) for name, values in run.items()]
    lines += [json.dumps(r) for r in extra]
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    broken = {"variant": "torchao-int4wo", "config": {"quant_backend": "torchao"}, "status": "error",
              "error": "RuntimeError: no <CPU> kernel for *int4* weights", "environment": ENV}  # fmt: skip
    write_folder(folder, extra=[broken])
    # a per-layer study of bnb-nf4's transformer, in the files compare writes
    study = folder / "sensitivity"
    study.mkdir()
    info = {"variant": "bnb-nf4", "component": "transformer", "quantization": "bitsandbytes_4bit nf4",
            "prompts": ["a red circle"]}  # fmt: skip
    (study / "bnb-nf4__transformer.json").write_text(json.dumps(info))
    rows = [f"{i},blocks.{i}.attn.to_q,64,64,{12.0 + i},{0.1 / (i + 1)},quantized" for i in range(4)]
    (study / "bnb-nf4__transformer.csv").write_text("rank,layer,in_features,out_features,sqnr_db,rel_error,status\n"
                                                    + "\n".join(rows) + "\n")  # fmt: skip
    results = CompareResults.load(folder)
    results.save()
    return folder, (folder / "report.md").read_text(), (folder / "report.html").read_text()


def summary(text: str) -> str:
    return text.split("## What this run found", 1)[1].split("##", 1)[0]


def test_html_is_rendered_markdown(report):
    _, md, page = report
    assert "**" in md and "|---|" in md  # the Markdown has them ...
    body = page.split("<body>", 1)[1]
    for raw in ("**", "`", "|---", "![", "## "):  # ... the HTML has none of them left
        assert raw not in body, f"unrendered Markdown {raw!r} in report.html"
    assert "<table>" in body and "<strong>gguf-Q4_0</strong>" in body and '<img alt="Quality against memory"' in body
    assert body.count("<table>") == 2  # the results and the per-layer sensitivity
    assert '<pre><code class="language-python">from quantkit.measure.sensitivity import keep_in_full_precision' in body
    assert "<code>modules_to_not_convert</code>" in body
    # text from the run (a prompt, an error) is shown as written, not read as Markdown or HTML
    assert "“a *bold* _word_”" in body and "<em>" not in body
    assert "<CPU>" not in body and "no &lt;CPU&gt; kernel for *int4* weights" in body


def test_summary_names_the_right_variants(report):
    _, md, _ = report
    found = summary(md)
    assert "Smallest: **gguf-Q4_0**, 4.4 MiB of weights, 0.36× the reference **baseline** (12.1 MiB)" in found
    assert "Closest to the reference: **gguf-Q8_0**, PSNR 56.8 dB; furthest: **bnb-nf4**, PSNR 29.9 dB" in found
    assert "Fastest: **baseline**, 0.376 s per image." in found
    # what differs from GPU expectations, and why, from the numbers
    assert "Every quantized variant is slower than the reference on this CPU (1.3× to 2.9× its 0.376 s" in found
    assert "dequantize" in found and "With 12.1 MiB of weights it is not." in found
    assert (
        "Peak memory hardly follows the weights" in found
        and "**gguf-Q4_0** (-1.2%), whose weights are 7.7 MiB smaller" in found
    )
    assert "The weights are only 2% of that peak" in found and "390.5 MiB before any weight is loaded" in found
    assert "torchao-int4wo" not in found  # a failed variant is in its own section, not in the findings


def test_summary_follows_the_numbers(tmp_path):
    run = {**RUN, "quanto-int8": ("quanto", 2_511_760, 0.300, 56.29, 509_067_264)}  # now faster than the baseline
    write_folder(tmp_path, run)
    results = CompareResults.load(tmp_path)
    from quantkit.show.report import findings

    found = "\n".join(findings(results))
    assert "Fastest: **quanto-int8**, 0.300 s per image." in found
    assert "Faster than the reference on this CPU: **quanto-int8** (0.8×); the other 4 quantized variants are" in found
    assert "Every quantized variant" not in found


def test_units_are_named_once_and_used_everywhere(report):
    folder, md, _ = report
    assert md.count("1 MiB = 1024 KiB = 2^20 bytes") == 1
    assert not re.search(r"\d (KB|MB|GB)\b", md), "a size in unnamed units"
    assert "| 12.1 MiB |" in md
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(12 * MiB) == "12.0 MiB" and human_bytes(3 * GiB) == "3.0 GiB"
    assert human_bytes(23.8e9, decimal=True) == "23.8 GB" and human_bytes(512) == "512 B"
    assert human_bytes(-2 * KiB) == "-2.0 KiB" and human_bytes(None) == "-"
    from PIL import Image

    assert min(Image.open(folder / "quality.png").info["dpi"]) >= 90
