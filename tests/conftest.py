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

MAX_WORKERS = 4  # `-n auto` (pyproject's addopts): one pytest-xdist worker per core, at most this many


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pytest_xdist_auto_num_workers(config):
    """Each worker builds its own session fixtures and runs notebooks in its own kernel (~1.5 GB at its peak), so
    a many-core machine gets MAX_WORKERS, not one worker per core."""
    return min(_cores(), MAX_WORKERS)


# Under pytest-xdist the cores are shared by the workers: each gets its share of threads (torch's default is one
# per core, and N workers × N threads on N cores spend their time in OpenMP's barriers). Set through the environment
# before torch is imported, so the subprocesses and notebook kernels a worker starts get the same share.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


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
