"""The flow stage on several processes: `training.train_flow` data-parallel over `ranks` CPU processes.

Why: the flow stage's matrices are too small for two OpenMP threads to help (one thread is faster than two, see
`ScenesConfig.flow_threads`), so a one-process flow stage leaves the training machine's second core idle. Here
each rank is a process with one thread; every step each draws its own `batch_size / ranks` samples, the
gradients are summed across ranks in one flat buffer (torch.distributed, gloo, `training.average_gradients`) and
every rank takes the same optimizer step, so the global batch is `batch_size`, as in one process.

The ranks start from the parent's weights (the pipeline is pickled into each); rank 0 writes its final (EMA)
weights back and every rank a checksum of them, which the parent compares: ranks that drifted apart raise
instead of saving a half-synchronised model. Progress and logs come from rank 0, on its stdout.

The ranks are started with torch.multiprocessing's "spawn", which imports the calling script again in each rank:
a script that trains with flow_ranks > 1 must keep its work under `if __name__ == "__main__":` (as
scripts/train_embedded.py does), or every rank re-runs the script from the top (measured: it redid the dataset and
text stages instead of training).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from quantkit.models.training import train_flow


def check_ranks(ranks: int, batch_size: int) -> None:
    """Raises ValueError unless `ranks` is a whole number >= 1 that divides `batch_size`."""
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise ValueError(f"flow_ranks must be a whole number >= 1, got {ranks!r}.")
    if batch_size % ranks:
        raise ValueError(
            f"flow_ranks={ranks} does not divide batch_size={batch_size}: each rank draws batch_size / flow_ranks "
            f"samples; choose a batch_size that is a multiple of {ranks} (e.g. {batch_size - batch_size % ranks})."
        )


def _trained_modules(pipe, auxiliary) -> dict:
    parts = {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
    if auxiliary is not None:
        parts["auxiliary"] = auxiliary
    return parts


def _checksum(modules: dict) -> float:
    return float(sum(p.double().sum() for m in modules.values() for p in m.state_dict().values()))


def _rank_main(rank, ranks, folder, pipe, latents, prompts, config, text_length, kwargs) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    # torch.multiprocessing hands every rank the parent's tensors in shared memory: without private copies the
    # ranks' optimizer steps would all land on the same weights (a CI run caught them ending apart). The pipeline
    # object itself is already this rank's own (unpickled here); only the tensors it holds are shared
    for name in ("transformer", "text_encoder", "text_encoder_2"):
        setattr(pipe, name, copy.deepcopy(getattr(pipe, name)))
    if kwargs.get("auxiliary") is not None:
        kwargs = {**kwargs, "auxiliary": copy.deepcopy(kwargs["auxiliary"])}
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=ranks)
    try:
        result = train_flow(pipe, latents, prompts, config, text_length, rank=rank, world=ranks, log=print, **kwargs)
        modules = _trained_modules(pipe, kwargs.get("auxiliary"))
        torch.save(_checksum(modules), Path(folder) / f"checksum{rank}.pt")
        if rank == 0:
            states = {name: m.state_dict() for name, m in modules.items()}
            torch.save({"states": states, "result": result}, Path(folder) / "rank0.pt")
    finally:
        dist.destroy_process_group()


def train_flow_ranks(pipe, latents, prompts, config, text_length: int, ranks: int, **kwargs) -> dict:
    """`training.train_flow(pipe, latents, prompts, config, text_length, **kwargs)` on `ranks` processes (see the
    module docstring); the trained weights are loaded into `pipe` (and `kwargs["auxiliary"]`) as train_flow would.
    `kwargs["log"]` is not sent to the ranks (it need not pickle): rank 0 prints.

    Raises:
        ValueError: ranks is not a whole number >= 1 dividing config.batch_size (before any process starts).
        RuntimeError: the ranks ended with different weights.
    """
    check_ranks(ranks, config.batch_size)
    log = kwargs.pop("log", print)
    if ranks == 1:
        return train_flow(pipe, latents, prompts, config, text_length, log=log, **kwargs)
    import torch.multiprocessing as mp

    log(f"flow stage on {ranks} processes, one thread each, {config.batch_size // ranks} samples per rank and step")
    with tempfile.TemporaryDirectory(prefix="quantkit-flow-") as folder:
        mp.spawn(_rank_main, args=(ranks, folder, pipe, latents, prompts, config, text_length, kwargs), nprocs=ranks)
        sums = [torch.load(Path(folder) / f"checksum{r}.pt") for r in range(ranks)]
        saved = torch.load(Path(folder) / "rank0.pt", weights_only=False)
    if len(set(sums)) != 1:
        raise RuntimeError(
            f"the {ranks} flow ranks ended with different weights (checksums {sums}); not loading them."
        )
    for name, module in _trained_modules(pipe, kwargs.get("auxiliary")).items():
        module.load_state_dict(saved["states"][name])
        module.eval()
    return {**saved["result"], "flow_ranks": ranks}
