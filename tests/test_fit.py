"""`fit`: candidates sized from configs, their predicted peaks against a GPU, in a sorted, readable frame."""

from __future__ import annotations

import pytest

from quantkit.planning.fit import GPUS, Candidate, default_candidates, fit, parse_memory, resolve_gpu

FLUX = "black-forest-labs/FLUX.1-dev"


@pytest.fixture(scope="module")
def t4_frame():
    return fit(FLUX, gpu="T4")


def test_frame_is_sorted_fits_first(t4_frame):
    fits = list(t4_frame["fits"])
    assert fits == sorted(fits, reverse=True), "every fitting candidate comes before every other"
    assert any(fits) and not all(fits)
    assert list(t4_frame.columns[:10]) == [
        "candidate",
        "backend",
        "bits",
        "components",
        "offload",
        "static_bytes",
        "peak_bytes",
        "fits",
        "margin_bytes",
        "host_bytes",
    ]
    fitting = t4_frame[t4_frame["fits"]]
    assert (fitting["margin_bytes"] >= 0).all() and (t4_frame[~t4_frame["fits"]]["margin_bytes"] < 0).any()


def test_flux_dev_on_a_t4_needs_offload_or_4_bits_everywhere(t4_frame):
    best = t4_frame.iloc[0]
    assert best["fits"] and best["offload"] == "model", best.to_dict()
    unoffloaded = t4_frame[(t4_frame["offload"] == "-") & t4_frame["fits"]]
    assert set(unoffloaded["bits"]) <= {4}, "nothing above 4 bits fits a T4 with the whole pipeline on it"
    assert not t4_frame[(t4_frame["backend"] == "-") & (t4_frame["offload"] == "-")]["fits"].any()


def test_t4_has_no_int4_tinygemm(t4_frame):
    int4wo = t4_frame[t4_frame["candidate"].str.contains("torchao int4wo")]
    assert len(int4wo) and not int4wo["fits"].any()
    assert int4wo["problem"].str.contains("needs compute capability >= 8.0").all()


def test_an_h100_fits_bf16_without_offload():
    frame = fit(FLUX, gpu="H100", offload=(None,))
    assert frame.iloc[0]["candidate"] == "bf16" and frame.iloc[0]["fits"]


def test_host_ram_is_sized_and_can_rule_a_candidate_out():
    """A free Colab has a T4 and ~12 GiB of RAM. With model offload every weight lives in host RAM between uses:
    NF4 on both big components fits the card (~6.9 GiB predicted) but needs ~12.8 GiB of RAM."""
    name = "bitsandbytes_4bit nf4 (both) + model offload"
    checked = fit(FLUX, gpu="T4", offload=("model",), host_memory="12GiB").set_index("candidate")
    unchecked = fit(FLUX, gpu="T4", offload=("model",)).set_index("candidate")
    assert unchecked.loc[name, "fits"] and unchecked.loc[name, "peak_bytes"] < 8 * 2**30  # the card alone
    assert unchecked.loc[name, "host_bytes"] > 12 * 2**30
    assert not checked.loc[name, "fits"] and "host RAM" in checked.loc[name, "problem"]
    assert checked.attrs["host_budget_bytes"] == 12 * 2**30 and unchecked.attrs["host_budget_bytes"] is None
    assert (checked[checked["fits"]]["host_bytes"] <= 12 * 2**30).all() and checked["fits"].any()
    assert (checked["host_bytes"] == unchecked.loc[checked.index, "host_bytes"]).all()


def test_memory_budget_instead_of_a_gpu():
    frame = fit(FLUX, memory="15GiB", offload=(None,))
    assert frame.attrs["budget_bytes"] == 15 * 2**30 and frame.attrs["gpu"] is None


def test_html_view_is_a_styled_table(t4_frame):
    html = t4_frame._repr_html_()
    assert "<table" in html and "GiB" in html and "usable memory 14.45 GiB (T4)" in html
    assert type(t4_frame.head(3)).__name__ == "FitFrame"  # slicing keeps the view


def test_default_candidates_cover_each_backend_at_8_and_4_bits():
    roles = {"transformer": "denoiser", "text_encoder": "text_encoder", "text_encoder_2": "text_encoder", "vae": "vae"}
    candidates = default_candidates(roles)
    backends = {(c.backend, c.bits) for c in candidates if c.backend}
    for backend in ("bitsandbytes_4bit", "bitsandbytes_8bit", "torchao", "quanto", "gguf"):
        assert any(b == backend for b, _ in backends), backend
    assert {bits for _, bits in backends} == {4, 8}
    groups = {c.components for c in candidates if c.backend == "quanto" and c.bits == 8 and c.offload is None}
    assert groups == {
        ("transformer",),
        ("text_encoder", "text_encoder_2"),
        ("transformer", "text_encoder", "text_encoder_2"),
    }
    assert {c.offload for c in candidates} == {None, "model"}


def test_custom_sizer_and_candidates():
    from quantkit.planning.peak import ComponentSizes

    def sizer(candidate):
        scale = 0.5 if candidate.backend else 1.0
        return [
            ComponentSizes("transformer", "FluxTransformer2DModel", "denoiser", int(8 * 2**30 * scale)),
            ComponentSizes("vae", "AutoencoderKL", "vae", 2**27),
        ]

    candidates = [
        Candidate("bf16", None, 16),
        Candidate("q", "quanto", 8, ("transformer",), {"weights_dtype": "int8"}),
    ]
    frame = fit(gpu="T4", sizer=sizer, candidates=candidates, height=512, width=512)
    assert list(frame["candidate"]) == ["bf16", "q"] and frame["fits"].all()


def test_bad_gpu_lists_the_known_ones_and_the_nearest():
    with pytest.raises(ValueError, match=r"Unknown gpu 'H200'\. Did you mean 'H100'\? Known GPUs: 'T4', '16GB'"):
        fit(FLUX, gpu="H200")
    with pytest.raises(ValueError, match=r"Known GPUs: .*'RTX 4090'.* pass its usable memory instead, e\.g\. memory="):
        resolve_gpu("Voodoo 5")


def test_gpu_names_match_loosely():
    assert resolve_gpu("t4") is GPUS["T4"]
    assert resolve_gpu("NVIDIA A100-80GB") is GPUS["A100 80GB"]
    assert resolve_gpu("4090") is GPUS["RTX 4090"]
    assert GPUS["T4"].usable_gib == pytest.approx(14.45)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("15GiB", 15 * 2**30),
        ("16GB", 16 * 10**9),
        ("15.5 GiB", int(15.5 * 2**30)),
        ("14000MiB", 14000 * 2**20),
        (2**30, 2**30),
    ],
)
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["16G", "lots", "15 GiBs", "-3GB", ""])
def test_bad_memory_names_the_accepted_forms(bad):
    with pytest.raises(ValueError, match=r"is not a size quantkit reads\. Use a number and a unit: '15GiB' .* '16GB'"):
        fit(FLUX, memory=bad)


def test_gpu_and_memory_are_exclusive():
    with pytest.raises(ValueError, match=r"Pass exactly one of gpu= .* or memory="):
        fit(FLUX, gpu="T4", memory="15GiB")
