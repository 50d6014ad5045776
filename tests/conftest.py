"""Shared fixtures: tiny pipelines built once per session, a device fixture, the `gpu` marker.

Everything is offline: pipelines come from quantkit.models.tiny (random weights, local tokenizers).
"""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _gguf_cache(tmp_path_factory):
    """Keep GGUF files quantkit writes inside the test session's tmp folder."""
    os.environ["QUANTKIT_CACHE"] = str(tmp_path_factory.mktemp("quantkit-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A function layout -> folder of a saved tiny random pipeline (built once per layout)."""
    from quantkit.models.tiny import save_tiny_pipeline

    made = {}

    def get(layout: str = "flux"):
        if layout not in made:
            made[layout] = save_tiny_pipeline(tmp_path_factory.mktemp(f"tiny-{layout}"), layout, seed=0)
        return made[layout]

    return get


@pytest.fixture(scope="session")
def flux_dir(tiny_pipeline_dir):
    return tiny_pipeline_dir("flux")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    return request.param
