"""The streaming loader: fill a meta-device model tensor by tensor, quantizing each Linear as it fills.

Tensors are grouped by the module that owns them, and as soon as a planned Linear has its weight (and bias)
it is handed to the backend's `quantize` and replaced by the quantized module, so only the layers being
quantized are ever in memory in full precision.

Where the bytes come from: a `SafetensorsSource` maps the files, so a planned layer's weight reaches the
quantizer as a view of the file's pages — no copy, no fresh buffer — and once the layer is quantized its pages
are handed back (`source.release`): the resident set grows by the quantized bytes only. Tensors that stay in
full precision (norms, biases, layers left unquantized) are copied out of the map. When the checkpoint's dtype
differs from the one asked for, a planned weight is converted into a staging buffer taken from a small pool
and given back when its layer is done (no fresh weight-sized allocation per layer).

Who quantizes: on the CPU, worker threads (as many as torch's intra-op threads, at most `MAX_WORKERS`; the
environment variable QUANTKIT_LOAD_WORKERS sets the number, 0 for none), each quantizing a whole layer with
its share of the intra-op threads (one each on 2 cores) and its own scratch buffers, reused from layer to layer.
torch releases the GIL in its kernels, so the layers run side by side without OpenMP barriers between small
kernels (which, on a loaded machine, cost more than they gain). The first planned layer runs alone (imports,
one-time setup), then at most `workers + 1` layers are in flight. An error in a worker is raised here, after
every worker has stopped.
On CUDA the calling thread quantizes (the kernels queue on the device anyway), and every tensor goes through
two pinned host buffers used in turn, copied to the device asynchronously while the next one is read.
"""

from __future__ import annotations

from collections import defaultdict, deque

from ..planning import ComponentPlan
from ..planning.layers import matches
from ..planning.sources import meta_model
from .allocator import release_freed_memory

MAX_WORKERS = 4  # quantizer threads at most: each holds one layer in flight (its mapped pages and scratch)
WORKERS_ENV = "QUANTKIT_LOAD_WORKERS"


def stream_load(
    c: ComponentPlan, source, dtype, device: str, quantize, *, progress: bool = False, workers: int | None = None
):
    """Fill a meta-device model tensor by tensor from `source`, replacing planned Linear layers as they fill.

    Args:
        c: the component's plan (class, folder, layers to quantize).
        source: a SafetensorsSource or GGUFSource (keys(), get(key), close(); optionally release(keys),
            prefetch(keys) and owns(tensor) for a mapped source).
        dtype: torch dtype for floating tensors (None keeps the file's).
        device: where tensors go.
        quantize: `quantize(linear) -> module` for the planned layers (a backend's quantize_linear, bound).
        progress: show a progress bar.
        workers: quantizer threads (None: `default_workers(device)`; 0: quantize on the calling thread).

    Raises:
        ValueError: when the checkpoint does not match the model (unexpected, missing or reshaped tensors).
        Whatever `quantize` raises, once every worker has stopped.
    """
    import torch
    from tqdm.auto import tqdm

    model = meta_model(c.library, c.class_name, c.folder)
    modules = dict(model.named_modules())
    expected = {k: v.shape for k, v in model.state_dict(keep_vars=True).items()}
    keys = source.keys()
    unexpected = [k for k in keys if k not in expected]
    if unexpected:
        source.close()
        raise ValueError(
            f"The weights of {c.name!r} do not match {c.class_name}: {len(unexpected)} unexpected tensors "
            f"(first: {unexpected[0]!r}). Check that the folder and its config.json belong together."
        )
    keep_fp32 = list(getattr(model, "_keep_in_fp32_modules", None) or []) if dtype == torch.float16 else []
    targets = set(c.quantized_layers)
    by_module: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in keys:
        owner, _, leaf = key.rpartition(".")
        by_module[owner].append((leaf, key))
    groups = list(by_module.items())
    owns = getattr(source, "owns", None) or (lambda tensor: False)
    release = getattr(source, "release", None) or (lambda keys: None)
    prefetch = getattr(source, "prefetch", None) or (lambda keys: None)
    mover = _Mover(device)
    pool = _Quantizers(quantize, default_workers(device) if workers is None else workers)
    pending: deque = deque()  # (owner, module, keys, staged buffers, future) in submission order

    def finish(owner, module, keys, staged, new):
        _copy_out(new, lambda t: owns(t) or mover.owns(t), owner)
        if new is not module:
            model.set_submodule(owner, new)
            modules[owner] = new
        mover.give(staged)
        release(keys)

    try:
        for i, (owner, items) in enumerate(tqdm(groups, desc=f"loading {c.name}", disable=not progress, leave=False)):
            if i + 1 < len(groups):
                prefetch([key for _, key in groups[i + 1][1]])
            module = modules[owner]
            planned = owner in targets
            staged = []
            for leaf, key in items:
                tensor = source.get(key)
                packed = isinstance(tensor, torch.nn.Parameter)  # GGUF blocks stay as they are
                if not packed and tuple(tensor.shape) != tuple(expected[key]):
                    raise ValueError(
                        f"Tensor {key!r} of {c.name!r} has shape {tuple(tensor.shape)}, but "
                        f"{c.class_name} expects {tuple(expected[key])}. The weights do not belong to "
                        "this config."
                    )
                want = None
                if not packed and dtype is not None and tensor.is_floating_point() and not matches(owner, keep_fp32):
                    want = dtype
                # a planned weight is only read by the quantizer: a view of the map (or a staging buffer) will do
                tensor = mover.place(tensor, want, staged if planned and leaf == "weight" and not packed else None)
                if not planned and owns(tensor):
                    tensor = tensor.clone()  # kept as it is: copied out of the map before its pages go
                if leaf in module._parameters:
                    module._parameters[leaf] = tensor if packed else torch.nn.Parameter(tensor, requires_grad=False)
                else:
                    module._buffers[leaf] = tensor
                del tensor
            layer_keys = [key for _, key in items]
            if not planned:
                release(layer_keys)
            elif not pool.threads:
                finish(owner, module, layer_keys, staged, quantize(module))
            else:
                pending.append((owner, module, layer_keys, staged, pool.submit(module)))
                # the first layer alone (lazy imports, one-time setup), then at most workers + 1 in flight
                while len(pending) > (pool.workers if pool.warm else 0):
                    *done, future = pending.popleft()
                    finish(*done, future.result())
                    pool.warm = True
            del module
        while pending:
            *done, future = pending.popleft()
            finish(*done, future.result())
        mover.finish()
        release_freed_memory()  # once per component: hand back what the heap freed
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
        if missing:
            raise ValueError(
                f"The weights of {c.name!r} lack {len(missing)} tensors of {c.class_name} (first: "
                f"{missing[0]!r}). The checkpoint is incomplete or belongs to another model."
            )
    finally:
        pending.clear()
        pool.close()  # waits for the workers: none outlives the load, whatever happened
        mover.close()
        source.close()
    return model.eval()


def default_workers(device: str) -> int:
    """Quantizer threads for a load on `device`: the environment variable QUANTKIT_LOAD_WORKERS if set (0: the
    calling thread quantizes), else torch's intra-op thread count on the CPU (at most MAX_WORKERS) and none on
    CUDA (the calling thread queues the kernels).

    Raises:
        ValueError: QUANTKIT_LOAD_WORKERS is not a whole number >= 0.
    """
    import os

    import torch

    value = os.environ.get(WORKERS_ENV, "")
    if value:
        if not value.isdigit():
            raise ValueError(f"{WORKERS_ENV}={value!r}: set it to a whole number of threads (0: no worker threads).")
        return int(value)
    if not str(device).startswith("cpu"):
        return 0
    return max(1, min(MAX_WORKERS, torch.get_num_threads()))


class _Quantizers:
    """Runs `quantize(module)` on worker threads, each with its share of torch's intra-op threads (2 threads:
    2 workers of 1; 16: 4 workers of 4) and its own reused scratch buffers (`checkpoint.reuse_scratch`).

    torch keeps the intra-op thread count per thread (OpenMP), so a worker's setting does not touch the caller's;
    where a build shares it process-wide, `close` restores the caller's count. With `workers` 0 there are no
    threads: the caller quantizes.
    """

    def __init__(self, quantize, workers: int):
        import torch

        self.quantize = quantize
        self.workers = max(0, workers)
        self.threads = self.workers > 0
        self.warm = False  # set once the first layer is done: then several may be in flight
        self._intra_op = torch.get_num_threads()
        self._executor = None

    def submit(self, module):
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(
                self.workers,
                thread_name_prefix="quantkit-quantize",
                initializer=_worker_setup,
                initargs=(max(1, self._intra_op // self.workers),),
            )
        return self._executor.submit(self.quantize, module)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
            import torch

            if torch.get_num_threads() != self._intra_op:
                torch.set_num_threads(self._intra_op)


def _worker_setup(intra_op_threads: int) -> None:
    import torch

    from ..checkpoint import reuse_scratch

    torch.set_num_threads(intra_op_threads)
    reuse_scratch()


class _Mover:
    """Puts a tensor read from the source where the model wants it (dtype, device), copying as little as it can.

    CPU: a tensor already in the wanted dtype passes through untouched (a view of the map); a planned weight that
    needs converting goes into a staging buffer from a pool (`staged` collects it, `give` returns it), anything
    else into a new tensor. CUDA: each tensor is copied into one of two pinned host buffers (converting on the
    way), then to a new device tensor without blocking; a buffer is written again only after its previous copy
    has finished.
    """

    def __init__(self, device: str):
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._free: list = []  # flat CPU staging buffers not in use
        self._lent: list = []  # and those holding a weight whose layer is not done
        self._pinned: list = [None, None]  # flat uint8 pinned buffers
        self._events: list = [None, None]
        self._turn = 0

    def place(self, tensor, dtype, staged: list | None):
        import torch

        dtype = dtype or tensor.dtype
        if self.cuda and tensor.device.type == "cpu" and not isinstance(tensor, torch.nn.Parameter):
            return self._to_cuda(tensor, dtype)
        if tensor.dtype == dtype:
            return tensor.to(self.device)
        if staged is None or self.device.type != "cpu":
            return tensor.to(device=self.device, dtype=dtype)
        buffer = self._take(tensor.numel(), dtype)
        staged.append(buffer)
        out = buffer[: tensor.numel()].view(tensor.shape)
        out.copy_(tensor)
        return out

    def _take(self, numel: int, dtype):
        import torch

        fits = [b for b in self._free if b.dtype == dtype and b.numel() >= numel]
        if fits:
            buffer = min(fits, key=lambda b: b.numel())
            self._free = [b for b in self._free if b is not buffer]
        else:
            buffer = torch.empty(numel, dtype=dtype)
        self._lent.append(buffer)
        return buffer

    def give(self, staged: list) -> None:
        """Return the staging buffers of a finished layer to the pool."""
        for buffer in staged:
            self._lent = [b for b in self._lent if b is not buffer]
            self._free.append(buffer)

    def _to_cuda(self, tensor, dtype):
        import torch

        n = tensor.numel() * dtype.itemsize
        slot = self._turn
        self._turn ^= 1
        if self._events[slot] is not None:
            self._events[slot].synchronize()  # its previous copy to the device is done: safe to overwrite
        buffer = self._pinned[slot]
        if buffer is None or buffer.numel() < n:
            buffer = self._pinned[slot] = torch.empty(max(n, 1 << 20), dtype=torch.uint8, pin_memory=True)
        host = buffer[:n].view(dtype).view(tensor.shape)
        host.copy_(tensor)
        out = torch.empty(tensor.shape, dtype=dtype, device=self.device)
        stream = torch.cuda.current_stream(self.device)  # where the copy is queued (the target device's stream)
        with torch.cuda.stream(stream):
            out.copy_(host, non_blocking=True)
        event = torch.cuda.Event()
        event.record(stream)
        self._events[slot] = event
        return out

    def owns(self, tensor) -> bool:
        """Whether `tensor` lives in a staging buffer (then it must be copied before the buffer is reused)."""
        buffers = self._lent + self._free
        if not buffers or tensor.device.type != "cpu":
            return False
        address = tensor.untyped_storage().data_ptr()
        return any(b.untyped_storage().data_ptr() == address for b in buffers)

    def finish(self) -> None:
        for event in self._events:
            if event is not None:
                event.synchronize()

    def close(self) -> None:
        self.finish()
        self._free, self._lent = [], []
        self._pinned = [None, None]
        self._events = [None, None]


def _copy_out(module, borrowed, name: str) -> None:
    """Copy every plain tensor of `module` that still points into the source's map or a staging buffer (e.g. a
    bias the quantized layer kept as it was), so that nothing outlives the load by pointing there.

    Raises:
        RuntimeError: a quantized tensor (a subclass) still points there: its adapter must build new tensors.
    """
    import torch

    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for key, t in list(table.items()):
                if t is None:
                    continue
                kept = _inner_borrowed(t, borrowed) if hasattr(t, "__tensor_flatten__") else borrowed(t)
                if not kept:
                    continue
                if type(t) not in (torch.Tensor, torch.nn.Parameter):
                    raise RuntimeError(
                        f"The quantized layer {name!r} ({type(sub).__name__}.{key}, a {type(t).__name__}) still "
                        "points into the checkpoint's mapped pages; its adapter's quantize_linear must build new "
                        "tensors."
                    )
                copy = t.detach().clone()
                table[key] = torch.nn.Parameter(copy, requires_grad=False) if table is sub._parameters else copy


def _inner_borrowed(t, borrowed) -> bool:
    names, _ = t.__tensor_flatten__()
    for n in names:
        inner = getattr(t, n)
        if hasattr(inner, "__tensor_flatten__"):
            if _inner_borrowed(inner, borrowed):
                return True
        elif borrowed(inner):
            return True
    return False


__all__ = ["MAX_WORKERS", "WORKERS_ENV", "default_workers", "stream_load"]
