"""The streaming loader's machinery: the mapped source, page release, staging, and the chunked quantizers.

The chunked quantizers in the adapters must give the library's own result bit for bit (the same operations in
the same dtypes, in chunks of rows), so they are compared with torch.equal against the library's own path;
the loader around them is checked for what it promises: mapped tensors equal to plain reads, pages handed back,
nothing left pointing into a map after a load, a truncated file named in the error. No timings here (the
benchmark `benchmarks/bench_load_memory.py` measures them).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import quantkit as qk
from quantkit.backends import get_backend
from quantkit.checkpoint import SafetensorsSource

BF16 = torch.bfloat16


def _save(folder: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def _rss_file() -> int | None:
    """Resident file-backed pages of this process (bytes), or None without /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# -- the source ---------------------------------------------------------------------------------------------------


def test_a_mapped_source_gives_the_same_tensors_as_plain_reads(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(64, 32, generator=g).to(BF16),
        "a.bias": torch.randn(64, generator=g),
        "b.codes": torch.arange(10, dtype=torch.int8),
        "b.half": torch.randn(3, 5, 7, generator=g).half(),
        "c.empty": torch.empty(0, 4),
        "d.flag": torch.tensor([True, False]),
    }
    folder = _save(tmp_path / "c", tensors)
    mapped, plain = SafetensorsSource(folder), SafetensorsSource(folder, mapped=False)
    assert sorted(mapped.keys()) == sorted(tensors)
    for key, expected in tensors.items():
        m, p = mapped.get(key), plain.get(key)
        assert m.dtype == p.dtype == expected.dtype and m.shape == p.shape == expected.shape, key
        assert torch.equal(m, expected) and torch.equal(p, expected), key
        if expected.numel():
            assert mapped.owns(m) and not plain.owns(p) and not mapped.owns(expected), key
    del m
    mapped.close()
    plain.close()


def test_a_write_to_a_mapped_tensor_never_reaches_the_file(tmp_path):
    folder = _save(tmp_path / "c", {"w": torch.ones(1024)})
    before = (folder / "model.safetensors").read_bytes()
    source = SafetensorsSource(folder)
    t = source.get("w")
    t.mul_(3)  # copy-on-write: this process sees it, the file does not
    assert float(t[0]) == 3.0
    del t
    source.close()
    assert (folder / "model.safetensors").read_bytes() == before
    again = SafetensorsSource(folder)
    assert float(again.get("w")[0]) == 1.0
    again.close()


@pytest.mark.skipif(_rss_file() is None, reason="needs /proc/self/status")
def test_released_pages_leave_the_resident_set(tmp_path):
    n = 32 << 20  # 32 MiB of data, far above the noise of other file pages
    folder = _save(tmp_path / "c", {"big": torch.ones(n // 4), "small": torch.zeros(8)})
    source = SafetensorsSource(folder)
    start = _rss_file()
    big = source.get("big")
    assert float(big.sum()) == n // 4  # touches every page
    touched = _rss_file()
    source.release(["big"])
    released = _rss_file()
    assert touched - start > 0.9 * n
    assert released - start < 0.1 * n
    assert float(big.sum()) == n // 4  # released pages are read again from the file when touched
    del big
    source.close()


def test_prefetch_and_release_are_no_ops_without_a_map(tmp_path):
    folder = _save(tmp_path / "c", {"w": torch.arange(6.0)})
    plain = SafetensorsSource(folder, mapped=False)
    plain.prefetch(["w"])
    plain.release(["w"])
    assert torch.equal(plain.get("w"), torch.arange(6.0)) and not plain.owns(plain.get("w"))
    plain.close()


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "plain"])
def test_a_truncated_file_raises_a_value_error_naming_the_file(tmp_path, mapped):
    folder = _save(tmp_path / "c", {"a": torch.randn(256), "b": torch.randn(256)})
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"{path} is truncated: tensor 'b' ends at byte"):
        SafetensorsSource(folder, mapped=mapped)


def test_a_truncated_checkpoint_fails_the_load_with_the_file_named(tiny_pipeline_dir, tmp_path):
    import shutil

    folder = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir("flux"), folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4096])
    config = qk.PipelineQuantizationConfig(
        quant_backend="quanto", quant_kwargs={"weights_dtype": "int8"}, components_to_quantize=["transformer"]
    )
    with pytest.raises(ValueError, match=f"{weights} is truncated"):
        qk.load_pipeline(folder, config, torch_dtype=BF16, device="cpu", progress=False)


# -- the loader around the source ------------------------------------------------------------------------------


def _plan(flux_dir, backend="quanto", kwargs=None, components=("transformer",)):
    config = qk.PipelineQuantizationConfig(
        quant_backend=backend,
        quant_kwargs=kwargs or {"weights_dtype": "int8"},
        components_to_quantize=list(components),
    )
    return qk.plan(flux_dir, config, device="cpu", torch_dtype=BF16)


def _closed(m) -> bool:
    try:
        len(m)
    except ValueError:  # "mmap closed or invalid"
        return True
    return False


def test_after_a_load_nothing_points_into_the_maps(flux_dir):
    """Kept tensors (norms, biases, unquantized layers) are copied out, so the maps can be unmapped at the end."""
    from quantkit.load.stream import stream_load

    c = _plan(flux_dir).components["transformer"]
    source = SafetensorsSource(c.folder)
    maps = [m for m in source._maps if m is not None]
    bases = list(source._bases)
    quanto = get_backend("quanto")
    model = stream_load(c, source, BF16, "cpu", lambda lin: quanto.quantize_linear(lin, c.spec.kwargs, "cpu"))
    assert maps and all(_closed(m) for m in maps)  # close() unmapped them: no tensor views them any more
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        inner = [getattr(t, n) for n in t.__tensor_flatten__()[0]] if hasattr(t, "__tensor_flatten__") else [t]
        for x in inner:
            x = getattr(x, "_data", x)
            address = x.untyped_storage().data_ptr()
            assert not any(b <= address < b + n for b, n in bases), name


def test_a_layer_the_quantizer_leaves_alone_is_copied_out_of_the_map(flux_dir):
    from quantkit.load.stream import stream_load

    c = _plan(flux_dir).components["transformer"]
    source = SafetensorsSource(c.folder)
    maps = [m for m in source._maps if m is not None]
    model = stream_load(c, source, BF16, "cpu", lambda lin: lin)  # "quantizes" by keeping the mapped weight
    assert all(_closed(m) for m in maps)
    plain = SafetensorsSource(c.folder, mapped=False)
    state = model.state_dict()
    assert all(torch.equal(state[k], plain.get(k).to(BF16)) for k in plain.keys())
    plain.close()


def test_a_quantized_tensor_that_keeps_a_view_of_the_map_is_an_error(flux_dir):
    from optimum.quanto import qint8
    from optimum.quanto.tensor.weights import WeightQBytesTensor

    from quantkit.load.stream import stream_load

    c = _plan(flux_dir).components["transformer"]

    def lazy(lin):  # a broken adapter: its quantized weight wraps the mapped bf16 weight itself
        w = lin.weight.data
        scale = torch.ones(w.shape[0], 1, dtype=w.dtype)
        lin.weight = torch.nn.Parameter(WeightQBytesTensor(qint8, 0, w.size(), w.stride(), w, scale, None))
        return lin

    with pytest.raises(RuntimeError, match="still points into the checkpoint's mapped pages"):
        stream_load(c, SafetensorsSource(c.folder), BF16, "cpu", lazy)


def test_an_fp32_checkpoint_goes_through_one_reused_staging_buffer(tmp_path, flux_dir):
    """Weights converted on the way (fp32 file, bf16 model) are quantized from a reused buffer and equal the
    quantization of the converted weight; nothing of the buffer is kept."""
    from quantkit.load import stream as stream_module

    c = _plan(flux_dir).components["transformer"]
    plain = SafetensorsSource(c.folder, mapped=False)
    assert all(plain.get(k).dtype == torch.float32 for k in plain.keys() if k.endswith(".weight"))
    quanto = get_backend("quanto")
    seen = []
    original = stream_module._Mover.place

    def spy(self, tensor, dtype, staged):
        out = original(self, tensor, dtype, staged)
        if staged:
            seen.append(self.owns(out))
        return out

    stream_module._Mover.place = spy
    try:
        model = stream_module.stream_load(
            c, SafetensorsSource(c.folder), BF16, "cpu", lambda lin: quanto.quantize_linear(lin, c.spec.kwargs, "cpu")
        )
    finally:
        stream_module._Mover.place = original
    assert seen and all(seen)
    modules = dict(model.named_modules())
    for layer in c.quantized_layers:
        ref = torch.nn.Linear(1, 1, device="meta", dtype=BF16)
        w = plain.get(f"{layer}.weight").to(BF16)
        ref.in_features, ref.out_features = w.shape[1], w.shape[0]
        ref.weight = torch.nn.Parameter(w, requires_grad=False)
        ref.bias = None
        expected = quanto.quantize_linear(ref, c.spec.kwargs, "cpu").weight
        assert torch.equal(modules[layer].weight._data, expected._data), layer
        assert torch.equal(modules[layer].weight._scale, expected._scale), layer
    plain.close()


# -- the quantizer threads ------------------------------------------------------------------------------------------


def _quantkit_threads():
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("quantkit-quantize")]


def test_worker_threads_give_the_same_model_as_the_calling_thread(flux_dir):
    from quantkit.load.stream import stream_load

    c = _plan(flux_dir).components["transformer"]
    quanto = get_backend("quanto")
    callers, threads = set(), set()

    def quantize(lin):
        import threading

        callers.add(threading.current_thread().name)
        threads.add(torch.get_num_threads())
        return quanto.quantize_linear(lin, c.spec.kwargs, "cpu")

    before = torch.get_num_threads()
    parallel = stream_load(c, SafetensorsSource(c.folder), BF16, "cpu", quantize, workers=2)
    assert any(n.startswith("quantkit-quantize") for n in callers)  # the workers did quantize
    assert torch.get_num_threads() == before and 1 in threads  # one intra-op thread each; the caller's unchanged
    serial = stream_load(c, SafetensorsSource(c.folder), BF16, "cpu", quantize, workers=0)
    a, b = parallel.state_dict(), serial.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _quantkit_threads() == []


def test_an_error_in_a_worker_is_raised_and_no_thread_is_left_behind(flux_dir):
    from quantkit.load.stream import stream_load

    c = _plan(flux_dir).components["transformer"]
    calls = []

    def broken(lin):
        calls.append(lin)
        if len(calls) == 3:
            raise ArithmeticError("layer three failed")
        return lin

    with pytest.raises(ArithmeticError, match="layer three failed"):
        stream_load(c, SafetensorsSource(c.folder), BF16, "cpu", broken, workers=2)
    assert _quantkit_threads() == []


def test_the_worker_count_comes_from_the_environment(monkeypatch):
    from quantkit.load.stream import MAX_WORKERS, WORKERS_ENV, default_workers

    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert default_workers("cpu") == min(MAX_WORKERS, torch.get_num_threads())
    assert default_workers("cuda") == 0
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert default_workers("cpu") == 3
    monkeypatch.setenv(WORKERS_ENV, "many")
    with pytest.raises(ValueError, match="QUANTKIT_LOAD_WORKERS='many': set it to a whole number"):
        default_workers("cpu")


# -- the chunked quantizers: bit for bit what the libraries compute ------------------------------------------------

# several chunks with a ragged last one (and 17 blocks of 64 rows for quanto's int4 packing), rows not a multiple
# of 64, in_features of one quanto int4 group, in_features that quanto groups by 64
SHAPES = [(1088, 256), (528, 256), (96, 128), (48, 320)]


def _weight(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(*shape, generator=g) * 0.05).to(dtype)
    w[1] = 0  # an all-zero row: the scale clamps
    return w


def _linear(w, bias=True):
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias, device="meta", dtype=w.dtype)
    lin.weight = torch.nn.Parameter(w.clone(), requires_grad=False)
    if bias:
        lin.bias = torch.nn.Parameter(torch.linspace(-1, 1, w.shape[0]).to(w.dtype), requires_grad=False)
    return lin


def _inner(t) -> dict:
    names, attrs = t.__tensor_flatten__()
    out = {}
    for n in names:
        x = getattr(t, n)
        out.update({f"{n}.{k}": v for k, v in _inner(x).items()} if hasattr(x, "__tensor_flatten__") else {n: x})
    return out


def _assert_same_tensor(a, b):
    assert type(a) is type(b) and a.requires_grad == b.requires_grad
    ia, ib = _inner(a), _inner(b)
    assert ia.keys() == ib.keys()
    for k in ia:
        assert ia[k].dtype == ib[k].dtype and ia[k].shape == ib[k].shape, k
        assert torch.equal(ia[k], ib[k]), k


@pytest.mark.parametrize("weights", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [BF16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_quanto_chunked_equals_freeze(weights, dtype, shape):
    from quantkit.backends.quanto import _materialize_buffers

    quanto = get_backend("quanto")
    kwargs = quanto.normalize_kwargs({"weights_dtype": weights})
    w = _weight(shape, dtype)
    ours = quanto.quantize_linear(_linear(w), kwargs, "cpu")
    lin = _linear(w)
    ref = quanto._empty(lin, kwargs, True)
    ref.weight, ref.bias = lin.weight, lin.bias
    _materialize_buffers(ref, "cpu")
    ref.freeze()
    _assert_same_tensor(ours.weight, ref.weight)
    x = torch.randn(3, shape[1]).to(dtype)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))


@pytest.mark.parametrize("dtype", [BF16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("shape", [*SHAPES, (1, 64)], ids=str)
def test_torchao_chunked_equals_quantize_(dtype, shape):
    from torchao.quantization import quantize_

    ao = get_backend("torchao")
    kwargs = ao.normalize_kwargs({"quant_type": "int8wo"})
    w = _weight(shape, dtype) if shape[0] > 1 else torch.randn(shape).to(dtype)
    ours = ao.quantize_linear(_linear(w), kwargs, "cpu")
    ref = _linear(w)
    quantize_(ref, ao.config_object(kwargs))
    _assert_same_tensor(ours.weight, ref.weight)
    assert repr(ours) == repr(ref)
    x = torch.randn(3, shape[1]).to(dtype)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))


def _bnb_4bit_reference(lin, r):
    import bitsandbytes as bnb

    new = bnb.nn.Linear4bit(
        lin.in_features, lin.out_features, bias=True, device="meta", quant_type=r["bnb_4bit_quant_type"]
    )
    storage = getattr(torch, r["bnb_4bit_quant_storage"])
    new.weight = bnb.nn.Params4bit(
        lin.weight.data,
        requires_grad=False,
        quant_type=r["bnb_4bit_quant_type"],
        compress_statistics=r["bnb_4bit_use_double_quant"],
        quant_storage=storage,
        module=new,
    ).to("cpu")
    return new


def _same_quant_state(a, b):
    for k in ("shape", "dtype", "blocksize", "quant_type", "nested"):
        assert getattr(a, k) == getattr(b, k), k
    for k in (
        "packing_format_for_cpu",
        "original_dtype",
        "original_nested",
        "original_qshape",
        "original_storage_type",
    ):
        assert getattr(a, k, None) == getattr(b, k, None), k
    for k in ("absmax", "code", "offset"):
        x, y = getattr(a, k, None), getattr(b, k, None)
        assert (x is None) == (y is None), k
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape, k
            assert torch.equal(x.float().nan_to_num(7.0), y.float().nan_to_num(7.0)), k
    assert (getattr(a, "state2", None) is None) == (getattr(b, "state2", None) is None)
    if getattr(a, "state2", None) is not None:
        assert torch.equal(a.state2.absmax, b.state2.absmax) and torch.equal(a.state2.code, b.state2.code)


@pytest.mark.parametrize(
    "options",
    [("nf4", False, "uint8"), ("fp4", False, "uint8"), ("nf4", True, "uint8"), ("nf4", False, "bfloat16")],
    ids=["nf4", "fp4", "nf4-double", "nf4-bf16-storage"],
)
@pytest.mark.parametrize("dtype", [BF16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("shape", [*SHAPES, (64, 100)], ids=str)
def test_bitsandbytes_4bit_chunked_equals_params4bit(options, dtype, shape):
    quant_type, double, storage = options
    b4 = get_backend("bitsandbytes_4bit")
    kwargs = b4.normalize_kwargs(
        {"bnb_4bit_quant_type": quant_type, "bnb_4bit_use_double_quant": double, "bnb_4bit_quant_storage": storage}
    )
    w = _weight(shape, dtype)
    w[3, :3] = torch.tensor([1.0, -1.0, 0.5]).to(dtype)  # values on the code points
    w[4, :63], w[4, 63] = 1e-40, 0.05  # scaled values below float32's smallest normal (FP4 has a bound at 0)
    w[4, 64:67] = torch.tensor([-1e-40, 3e-39, -0.0]).to(dtype)
    if shape == (96, 128):
        w[5, 7], w[9, 3] = float("inf"), float("nan")  # blocks bitsandbytes itself handles
    ours = b4.quantize_linear(_linear(w), kwargs, "cpu")
    ref = _bnb_4bit_reference(_linear(w), b4.resolved(kwargs))
    assert ours.weight.data.dtype == ref.weight.data.dtype and ours.weight.data.shape == ref.weight.data.shape
    assert torch.equal(ours.weight.data.view(torch.uint8), ref.weight.data.view(torch.uint8))
    _same_quant_state(ours.weight.quant_state, ref.weight.quant_state)
    assert ours.quant_state is ours.weight.quant_state and ours.weight.bnb_quantized


@pytest.mark.parametrize(
    "options",
    [("nf4", False, "uint8"), ("fp4", False, "uint8"), ("nf4", True, "uint8"), ("nf4", False, "bfloat16")],
    ids=["nf4", "fp4", "nf4-double", "nf4-bf16-storage"],
)
@pytest.mark.parametrize("shape", [(1088, 256), (96, 128)], ids=str)
def test_bitsandbytes_4bit_first_forward_equals_bitsandbytes_own(options, shape):
    """Where bitsandbytes converts 4-bit weights for its CPU kernel at the first forward (AVX512-BF16), the
    loader's layers convert in place to the same bytes and state, compute the same output, and save the same
    (standard) state dict; elsewhere nothing is converted at all."""
    quant_type, double, storage = options
    b4 = get_backend("bitsandbytes_4bit")
    kwargs = b4.normalize_kwargs(
        {
            "bnb_4bit_quant_type": quant_type,
            "bnb_4bit_use_double_quant": double,
            "bnb_4bit_quant_storage": storage,
            "bnb_4bit_compute_dtype": "bfloat16",
        }
    )
    w = _weight(shape, BF16)
    ours = b4.quantize_linear(_linear(w), kwargs, "cpu").eval()
    ref = _bnb_4bit_reference(_linear(w), b4.resolved(kwargs)).eval()
    ref.bias = torch.nn.Parameter(ours.bias.data.clone(), requires_grad=False)
    ref.compute_dtype = ours.compute_dtype
    x = torch.randn(4, shape[1]).to(BF16)
    for _ in range(2):  # a second call finds the converted state
        with torch.no_grad():
            before = ours(x)
            assert torch.equal(before, ref(x))
    converted = getattr(ref.weight.quant_state, "packing_format_for_cpu", False)
    assert getattr(ours.weight.quant_state, "packing_format_for_cpu", False) == converted
    assert ours.weight.data.dtype == ref.weight.data.dtype and ours.weight.data.shape == ref.weight.data.shape
    # packed 4-bit codes: compared as bytes (in bfloat16 storage some byte pairs read as NaN, and NaN != NaN)
    assert torch.equal(ours.weight.data.contiguous().view(torch.uint8), ref.weight.data.contiguous().view(torch.uint8))
    _same_quant_state(ours.weight.quant_state, ref.weight.quant_state)
    fresh_layer = _bnb_4bit_reference(_linear(w), b4.resolved(kwargs))  # never laid out for the CPU kernel
    fresh_layer.bias = torch.nn.Parameter(ours.bias.data.clone(), requires_grad=False)
    fresh = fresh_layer.state_dict()
    a, b = ours.state_dict(), ref.state_dict()  # undoes the conversion on both
    assert a.keys() == b.keys() == fresh.keys()
    expected = dict(fresh)
    if converted and not double:
        # bitsandbytes' own inverse leaves the statistics (in_features/64, out_features), transposed: wrong for
        # layers wider than 64 (quantkit.backends.bitsandbytes_chunks.undo_cpu_layout). Ours are the fresh layer's
        # in their own order, with the bfloat16 rounding the layout applied.
        expected["weight.absmax"] = fresh["weight.absmax"].to(BF16).float()
        if shape[1] > 64:
            assert not torch.equal(b["weight.absmax"].reshape(-1).float(), expected["weight.absmax"])
    # nested statistics: ours are the ones quantization made (bitsandbytes quantizes its bf16 copy again)
    for k in a:  # bytes: packed codes stored as bf16 can read as NaN
        assert a[k].dtype == expected[k].dtype and a[k].shape == expected[k].shape, k
        assert torch.equal(a[k].reshape(-1).view(torch.uint8), expected[k].reshape(-1).view(torch.uint8)), k
    with torch.no_grad():
        out = ours(x)
        assert torch.equal(out, before)  # converted again by the hook: the same model after the state dict
        if not converted:
            assert torch.equal(out, ref(x))  # nothing was laid out: bitsandbytes' layer is unchanged too


@pytest.mark.parametrize("dtype", [BF16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bitsandbytes_8bit_chunked_equals_int8params(dtype, shape):
    import bitsandbytes as bnb

    b8 = get_backend("bitsandbytes_8bit")
    w = _weight(shape, dtype)
    ours = b8.quantize_linear(_linear(w), b8.normalize_kwargs({}), "cpu")
    ref = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False).to("cpu")
    assert torch.equal(ours.weight.data, ref.data) and torch.equal(ours.weight.CB, ref.CB)
    assert ours.weight.SCB.dtype == ref.SCB.dtype and torch.equal(ours.weight.SCB, ref.SCB)


def test_chunked_quantizers_keep_no_view_of_their_input():
    """The result must not alias the input weight (it is the file's mapped pages during a load)."""
    w = _weight((256, 128), BF16)
    cases = [
        ("quanto", {"weights_dtype": "int8"}),
        ("quanto", {"weights_dtype": "int4"}),
        ("torchao", {"quant_type": "int8wo"}),
        ("bitsandbytes_4bit", {"bnb_4bit_quant_type": "nf4"}),
        ("bitsandbytes_8bit", {}),
    ]
    for backend, kwargs in cases:
        adapter = get_backend(backend)
        lin = _linear(w)
        address = lin.weight.untyped_storage().data_ptr()
        new = adapter.quantize_linear(lin, adapter.normalize_kwargs(kwargs), "cpu")
        t = new.weight
        inner = _inner(t).values() if hasattr(t, "__tensor_flatten__") else [t.data]
        assert all(x.untyped_storage().data_ptr() != address for x in inner), backend
