"""quantkit's torch-ops kernel for quanto's int4/int2 unpacking on CPU: quanto's own packing round-trips through
it, and a quantkit int4 layer runs on CPU without quanto's C++ extension being built or loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("optimum.quanto")


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("rows", [1, 7, 64, 301])
def test_quanto_packing_round_trips_through_the_kernel(bits, rows):
    import torch
    from optimum.quanto.tensor.packed import PackedTensor

    from quantkit.backends.quanto_unpack import unpack, use_torch_unpack_on_cpu

    use_torch_unpack_on_cpu()
    values = torch.randint(0, 1 << bits, (rows, 37), dtype=torch.uint8, generator=torch.Generator().manual_seed(rows))
    packed = PackedTensor.pack(values, bits)  # quanto's own packing
    assert torch.equal(packed.unpack(), values)  # through the operator, as quanto's tensors call it
    assert torch.equal(unpack(packed._data, bits)[:rows], values)


CHECK = """
import json, torch
from optimum.quanto.library.extensions import cpp
from quantkit.backends import get_backend
quanto = get_backend("quanto")
layer = torch.nn.Linear(256, 64).to(torch.float16)
out = {}
for weights in ("int4", "int2"):
    q = quanto.quantize_linear(layer, quanto.normalize_kwargs({"weights_dtype": weights}), "cpu")
    with torch.no_grad():
        y = q(torch.randn(3, 256).to(torch.float16))
        err = (q.weight.dequantize().float() - layer.weight.float()).abs().max().item()
    out[weights] = {"shape": list(y.shape), "max_error": err}
print(json.dumps({"built": cpp.ext._lib is not None, **out}))
"""


def test_int4_and_int2_layers_run_on_cpu_without_building_the_extension():
    """In a fresh interpreter (this process may have loaded the extension through other tests): quanto's loader is
    never called, and the dequantized weights are within half a quantization step of the originals."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["built"] is False, result
    # weights ~U(-1/16, 1/16): a group of 128 spans ~1/8, in 15 steps (int4) or 3 (int2); rounding is half a step
    for weights, steps in (("int4", 15), ("int2", 3)):
        assert result[weights]["shape"] == [3, 64]
        assert result[weights]["max_error"] <= 0.125 / steps / 2 * 1.1, result
