"""The offline catalog: configs that size each published component like its weight files, with no download.

The oracle: `meta_headers`, computed from configs alone, must equal `read_headers` of real saved checkpoints (the
embedded pipeline and the tiny layouts), and for every catalog entry its bytes must match the published weight
files within 1%. Building every catalog component on the meta device takes a few seconds, once per session.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from quantkit.catalog import (
    CATALOG,
    catalog_folder,
    header_bytes,
    meta_headers,
    model_components,
    published,
    published_sizes,
    remote_configs,
    remote_headers,
)

REQUIRED = (
    "black-forest-labs/FLUX.1-dev",
    "black-forest-labs/FLUX.1-schnell",
    "stabilityai/stable-diffusion-3.5-large",
    "stabilityai/stable-diffusion-3.5-medium",
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
)
ENTRIES = [(hub, comp) for hub in CATALOG for comp in model_components(catalog_folder(hub))]


def test_catalog_lists_the_published_pipelines():
    assert set(REQUIRED) <= set(CATALOG)
    assert set(published_sizes()) == set(CATALOG), "every catalog id needs its published sizes, and only those"
    for hub in CATALOG:
        folder = catalog_folder(hub)
        assert (folder / "model_index.json").is_file()
        assert (folder / "scheduler" / "scheduler_config.json").is_file()
        assert set(model_components(folder)) == set(published_sizes()[hub]), hub


def test_catalog_folder_matches_ids_case_insensitively():
    assert catalog_folder("black-forest-labs/flux.1-DEV").name == "black-forest-labs--FLUX.1-dev"
    assert catalog_folder("someone/not-in-the-catalog") is None


@pytest.mark.parametrize("hub,component", ENTRIES, ids=[f"{h.split('/')[1]}-{c}" for h, c in ENTRIES])
def test_meta_bytes_match_the_published_weight_files(hub, component):
    entry = published(hub, component)
    headers = meta_headers(catalog_folder(hub), component)
    meta = header_bytes(headers)
    assert abs(meta - entry["bytes"]) <= 0.01 * entry["bytes"], (
        f"{hub} {component}: the config gives {meta:,} bytes, the published files {entry['figure']}"
    )
    floats = {code for code, _ in headers.values() if code in ("F32", "F16", "BF16")}
    assert floats == {{"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[entry["dtype"]]}


def test_flux_dev_reference_sizes():
    """FACTS.md's public figures, spelled out: 23.8 GB, 9.52 GB, 246 MB, 168 MB in BF16 (decimal)."""
    folder = catalog_folder("black-forest-labs/FLUX.1-dev")
    for component, size in (
        ("transformer", 23.8e9),
        ("text_encoder_2", 9.52e9),
        ("text_encoder", 246e6),
        ("vae", 168e6),
    ):
        assert header_bytes(meta_headers(folder, component)) == pytest.approx(size, rel=0.01), component


def test_tied_t5_embedding_is_counted_once():
    headers = meta_headers(catalog_folder("black-forest-labs/FLUX.1-dev"), "text_encoder_2")
    assert "shared.weight" in headers and "encoder.embed_tokens.weight" not in headers


def test_meta_headers_equal_a_real_checkpoint_header():
    """Names, shapes and (with dtype given) codes exactly as read from the embedded pipeline's files."""
    from quantkit import EMBEDDED_PIPELINE
    from quantkit.checkpoint import read_headers

    for component in model_components(EMBEDDED_PIPELINE):
        assert meta_headers(EMBEDDED_PIPELINE, component, dtype="float32") == read_headers(
            EMBEDDED_PIPELINE / component
        ), component


@pytest.mark.parametrize("layout", ["sd3", "pixart"])
def test_meta_headers_equal_the_tiny_layouts(tiny_pipeline_dir, layout):
    from quantkit.checkpoint import read_headers

    folder = tiny_pipeline_dir(layout)
    for component in model_components(folder):
        real = read_headers(folder / component)
        dtype = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[next(iter(real.values()))[0]]
        assert meta_headers(folder, component, dtype=dtype) == real, component


def test_meta_headers_bad_component_names_the_choices():
    with pytest.raises(ValueError, match=r"'transfomer' is not a model component .* Did you mean 'transformer'\?"):
        meta_headers(catalog_folder("black-forest-labs/FLUX.1-dev"), "transfomer")


def test_import_catalog_stays_light():
    code = "import sys, quantkit.catalog as c; c.CATALOG; c.published_sizes(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- hub ids outside the catalog: fake network ------------------------------------------------------


class FakeHub:
    """Files of one fake repo: name -> bytes; safetensors headers: name -> {tensor: (code, shape)}."""

    def __init__(self, files=None, headers=None, down=False):
        self.files, self.headers, self.down, self.calls = files or {}, headers or {}, down, []

    def fetch(self, repo_id, filename):
        self.calls.append(("fetch", filename))
        if self.down:
            raise ConnectionError("offline mode is enabled")
        if filename not in self.files:
            raise FileNotFoundError(filename)
        return self.files[filename]

    def read_header(self, repo_id, filename):
        self.calls.append(("header", filename))
        if self.down:
            raise ConnectionError("offline mode is enabled")
        if filename not in self.headers:
            raise FileNotFoundError(filename)
        return self.headers[filename]


def test_remote_headers_reads_the_index_then_each_shard_header():
    index = {
        "weight_map": {
            "a.weight": "diffusion_pytorch_model-00001-of-00002.safetensors",
            "b.weight": "diffusion_pytorch_model-00002-of-00002.safetensors",
        }
    }
    hub = FakeHub(
        files={"transformer/diffusion_pytorch_model.safetensors.index.json": json.dumps(index).encode()},
        headers={
            "transformer/diffusion_pytorch_model-00001-of-00002.safetensors": {"a.weight": ("BF16", (4, 8))},
            "transformer/diffusion_pytorch_model-00002-of-00002.safetensors": {"b.weight": ("BF16", (8,))},
        },
    )
    out = remote_headers("org/model", "transformer", fetch=hub.fetch, read_header=hub.read_header)
    assert out == {"a.weight": ("BF16", (4, 8)), "b.weight": ("BF16", (8,))}
    assert [c for c in hub.calls if c[0] == "header"] == [
        ("header", "transformer/diffusion_pytorch_model-00001-of-00002.safetensors"),
        ("header", "transformer/diffusion_pytorch_model-00002-of-00002.safetensors"),
    ]


def test_remote_headers_single_file_for_a_transformers_component():
    hub = FakeHub(headers={"text_encoder/model.safetensors": {"shared.weight": ("F16", (10, 4))}})
    out = remote_headers("org/model", "text_encoder", fetch=hub.fetch, read_header=hub.read_header)
    assert out == {"shared.weight": ("F16", (10, 4))}


def test_remote_headers_offline_names_the_repo_and_the_fix():
    hub = FakeHub(down=True)
    with pytest.raises(
        OSError,
        match=r"Could not read 'org/model' \(component 'transformer'\) from the Hugging "
        r"Face hub \(ConnectionError: offline mode is enabled\)\. Without network access.*"
        r"huggingface-cli download org/model",
    ):
        remote_headers("org/model", "transformer", fetch=hub.fetch, read_header=hub.read_header)


def test_remote_headers_offline_suggests_a_catalog_id():
    hub = FakeHub(down=True)
    with pytest.raises(OSError, match=r"Did you mean 'black-forest-labs/FLUX.1-dev'\?"):
        remote_headers("black-forest-labs/FLUX.1-devv", "transformer", fetch=hub.fetch, read_header=hub.read_header)


def test_remote_headers_without_safetensors():
    hub = FakeHub(files={"unet/diffusion_pytorch_model.bin": b"..."})
    with pytest.raises(OSError, match=r"has no safetensors weights on the hub \(looked for unet/diffusion_pytorch_"):
        remote_headers("org/model", "unet", fetch=hub.fetch, read_header=hub.read_header)


def test_remote_headers_real_hub_offline_is_a_clear_oserror(monkeypatch):
    """With HF_HUB_OFFLINE=1 the real huggingface_hub calls fail fast; the message still names the repo."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"Could not read 'org/not-cached' \(component 'transformer'\)"):
        remote_headers("org/not-cached", "transformer")


def test_remote_configs_copies_only_configs(tmp_path):
    source = catalog_folder("black-forest-labs/FLUX.1-dev")
    files = {str(p.relative_to(source)): p.read_bytes() for p in source.rglob("*.json")}
    hub = FakeHub(files=files)
    folder = remote_configs("black-forest-labs/FLUX.1-dev", tmp_path / "flux", fetch=hub.fetch)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.json")) == sorted(files)
    assert all(name.endswith(".json") for _, name in hub.calls)
    assert header_bytes(meta_headers(folder, "vae", dtype="bfloat16")) == header_bytes(meta_headers(source, "vae"))


def test_plan_of_a_catalog_id_works_offline_through_qk_plan():
    import quantkit as qk

    config = qk.PipelineQuantizationConfig(
        quant_backend="quanto", quant_kwargs={"weights_dtype": "int8"}, components_to_quantize=["transformer"]
    )
    p = qk.plan("black-forest-labs/FLUX.1-dev", config, device="cuda", torch_dtype="bfloat16", height=1024)
    before = p.components["transformer"].bytes_before
    assert before == pytest.approx(23.8e9, rel=0.01)  # the published BF16 weight file, from configs alone
    assert p.components["transformer"].bytes_after < 0.55 * before
    assert p.components["text_encoder_2"].bytes_before == pytest.approx(9.52e9, rel=0.01)
    assert p.peak is not None and p.peak.peak > p.bytes_after  # weights plus activations, decode, allocator cache
    assert "PeakEstimate on cuda" in repr(p)


def test_a_catalog_folder_can_be_planned_but_not_loaded():
    import quantkit as qk
    from quantkit.catalog import catalog_folder

    with pytest.raises(OSError, match="can be planned but not loaded"):
        qk.load_pipeline(catalog_folder("black-forest-labs/FLUX.1-schnell"), None, device="cpu", progress=False)
