"""optimum-quanto's int4/int2 unpacking on CPU, in torch ops, so that no C++ extension is built.

quanto registers a C++ kernel for its `quanto::unpack` operator on CPU and compiles it with
`torch.utils.cpp_extension` on the first int4/int2 dequantization: that needs a C++ compiler and ninja, and took
108 s on a 2-core machine (a notebook cell that seems to hang; a classroom machine without build tools fails).
The operation is a few bit shifts; in torch ops it gives the same bytes and, measured on a 3072 × 1536 packed
weight with one thread, took 15 ms against the compiled kernel's 16 ms. quantkit puts this kernel in place of
quanto's for the CPU dispatch key the first time its quanto backend builds a quantized layer
(`use_torch_unpack_on_cpu`); other devices keep quanto's own kernels.
"""

from __future__ import annotations

import warnings

_LIBRARY = None  # the torch.library fragment holding the kernel; kept alive, registered once per process


def unpack(packed, bits: int):
    """quanto's packing undone: value i of each byte sits at bits [bits·i, bits·(i+1)), and the unpacked rows
    of value i follow those of value i−1 (`optimum.quanto.tensor.packed.pack_weights` is the inverse)."""
    import torch

    mask = (1 << bits) - 1
    return torch.cat([(packed >> (bits * i)) & mask for i in range(8 // bits)]).to(torch.uint8)


def use_torch_unpack_on_cpu() -> None:
    """Register `unpack` as `quanto::unpack`'s CPU kernel (once; quanto must be importable)."""
    global _LIBRARY
    if _LIBRARY is not None:
        return
    import optimum.quanto  # noqa: F401  (defines the operator and registers its C++ kernel's loader)
    import torch

    library = torch.library.Library("quanto", "IMPL")
    with warnings.catch_warnings():  # torch notes that a registered kernel is overridden: that is the point
        warnings.simplefilter("ignore")
        library.impl("unpack", unpack, "CPU")
    _LIBRARY = library
