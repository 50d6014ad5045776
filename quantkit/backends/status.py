"""What each backend can do on this machine: its package and version, and whether it runs on CPU and CUDA here.

`backend_status()` is what `quantkit backends` prints. Nothing is imported to find a version (package metadata
only), so it is quick and works when a backend's import is broken.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import metadata

from . import REGISTRY


@dataclass(frozen=True)
class BackendStatus:
    """One backend on this machine.

    Attributes:
        backend: the backend's name (quant_backend).
        package: the pip requirement it needs.
        version: the installed version, or None when it is not installed.
        cpu / cuda: whether a default config of it runs there ("yes"), or why not.
        bits: what it quantizes to, in words.
        cuda_only: choices of its main option that need a CUDA GPU (e.g. torchao's "int4wo").
    """

    backend: str
    package: str
    version: str | None
    cpu: str
    cuda: str
    bits: str
    cuda_only: tuple[str, ...] = ()


def _distribution(module: str) -> str:
    return {"optimum.quanto": "optimum-quanto"}.get(module, module.split(".")[0])


def _cuda_here() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _where(adapter, device: str, have: bool) -> str:
    """ "yes" when a default config of `adapter` runs on `device` here, else "no: why"."""
    missing = adapter.package_problem()
    if missing is not None:
        return f"no: {missing.reason} (pip install '{adapter.pip_spec}')"
    problem = adapter.device_problem(adapter.normalize_kwargs({}), device)
    if problem is not None:
        return f"no: {problem.reason}"
    return "yes" if have else "yes (no CUDA GPU on this machine)"


def _needs_cuda(adapter, kwargs: dict) -> bool:
    from ..problems import ProblemKind

    try:
        problem = adapter.device_problem(adapter.normalize_kwargs(kwargs), "cpu")
    except (TypeError, ValueError):  # e.g. a choice that needs another option with it
        return False
    return problem is not None and problem.kind is ProblemKind.NEEDS_HARDWARE


def backend_status() -> list[BackendStatus]:
    """Every registered backend, with its installed version and where a default config of it runs here."""
    cuda_here = _cuda_here()
    out = []
    for name, adapter in REGISTRY.items():
        try:
            version = metadata.version(_distribution(adapter.module))
        except metadata.PackageNotFoundError:
            version = None

        main = next(iter(adapter.options))
        cuda_only = tuple(
            str(choice) for choice in adapter.option_choices(main) or () if _needs_cuda(adapter, {main: choice})
        )
        out.append(
            BackendStatus(
                name,
                adapter.pip_spec,
                version,
                _where(adapter, "cpu", True),
                _where(adapter, "cuda", cuda_here),
                adapter.bits,
                cuda_only,
            )
        )
    return out


def status_rows() -> list[dict]:
    """`backend_status()` as plain dicts (for --json)."""
    return [asdict(s) for s in backend_status()]


__all__ = ["BackendStatus", "backend_status", "status_rows"]
