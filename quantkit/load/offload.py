"""Offloading a loaded pipeline, and compiling its denoiser: diffusers' own mechanisms, applied after the load.

Offload modes (`load_pipeline(..., offload=)`; also a comparison variant's `offload`):

    None          everything stays on the device it was loaded on
    "model"       `pipe.enable_model_cpu_offload()`: whole components move to the GPU when they run (accelerate hooks)
    "sequential"  `pipe.enable_sequential_cpu_offload()`: every submodule moves to the GPU for its forward only
    "group"       `pipe.enable_group_offload(..., offload_type="leaf_level", use_stream=True)`: groups of layers
                  move to the GPU ahead of use on a CUDA stream (diffusers' hooks)

Offloading keeps weights in host memory and streams them to a GPU; on a machine without CUDA there is nothing to
offload to, so the modes raise a RuntimeError naming CUDA before anything is loaded. Quantized components are built
on the GPU (as `device=` says) and then handed to the hooks, which move them to the CPU between uses; unquantized
components stay on the CPU from the start.

Compile modes (a comparison variant's `compile`): None, "regional" (`compile_repeated_blocks()` where the model
defines its repeated blocks, else `torch.compile` of the whole denoiser), "full" (`torch.compile` of the denoiser).
They run on CUDA only here as well: on a CPU inductor builds C++ kernels for minutes on small machines, and the
numbers quantkit reports are for GPUs.
"""

from __future__ import annotations

OFFLOAD_MODES = (None, "model", "sequential", "group")
COMPILE_MODES = (None, "regional", "full")


def check_offload(offload: str | None, device: str) -> str | None:
    """Validate an offload mode for `device` (before any work).

    Raises:
        ValueError: an unknown mode.
        RuntimeError: a mode on a device that is not CUDA (or CUDA absent here).
    """
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload={offload!r} is not an offload mode; use one of {list(OFFLOAD_MODES)}.")
    if offload is not None:
        _needs_cuda(f"offload={offload!r}", device, "it keeps weights in CPU memory and moves them to a CUDA GPU")
    return offload


def check_compile(compile: str | bool | None, device: str) -> str | None:
    """Validate a compile mode for `device` (True means "regional"); see the module docstring.

    Raises:
        ValueError: an unknown mode.
        RuntimeError: a mode on a device that is not CUDA (or CUDA absent here).
    """
    if compile is True:
        compile = "regional"
    if compile is False:
        compile = None
    if compile not in COMPILE_MODES:
        raise ValueError(
            f"compile={compile!r} is not a compile mode; use one of {list(COMPILE_MODES)} (True = 'regional')."
        )
    if compile is not None:
        _needs_cuda(
            f"compile={compile!r}",
            device,
            "quantkit compiles and times the denoiser on CUDA GPUs only; "
            "on a CPU, inductor builds C++ kernels for minutes",
        )
    return compile


def _needs_cuda(what: str, device: str, why: str) -> None:
    if not str(device).startswith("cuda"):
        raise RuntimeError(
            f"{what} needs a CUDA device ({why}), but device={device!r}. Leave it out on this "
            "machine, or run on a CUDA GPU with device='cuda'."
        )
    from ..devices import check_device

    check_device(device)  # RuntimeError naming CUDA when this machine has none


def apply_offload(pipe, offload: str | None, device: str) -> None:
    """Enable `offload` (checked with `check_offload`) on a loaded pipeline, onloading to `device`."""
    if offload is None:
        return
    import torch

    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.enable_group_offload(
            onload_device=torch.device(device),
            offload_device=torch.device("cpu"),
            offload_type="leaf_level",
            use_stream=True,
        )
    pipe.quantkit_offload = offload


def apply_compile(pipe, compile: str | None) -> str | None:
    """Compile the pipeline's denoiser (`compile` checked with `check_compile`); returns how it was compiled."""
    if compile is None:
        return None
    from ..planning.roles import denoiser

    name = denoiser(pipe.components)
    if name is None:
        raise ValueError(
            f"This pipeline has no transformer or unet to compile; its components: {sorted(pipe.components)}."
        )
    model = getattr(pipe, name)
    if compile == "regional" and getattr(model, "_repeated_blocks", None):
        model.compile_repeated_blocks(fullgraph=False)
        how = "compile_repeated_blocks"
    else:
        model.compile()
        how = "torch.compile"
    pipe.quantkit_compile = how
    return how


__all__ = ["COMPILE_MODES", "OFFLOAD_MODES", "apply_compile", "apply_offload", "check_compile", "check_offload"]
