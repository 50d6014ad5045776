"""The `quantkit plan`, `fit`, `footprint` and `backends` verbs: each turns parsed arguments into one library call
and prints its table (or, with --json, the same rows as JSON). `quantkit compare` lives in `quantkit.cli`."""

from __future__ import annotations

import json
from pathlib import Path

OK = 0


def _config(args):
    """The PipelineQuantizationConfig the arguments describe (None: plan the unquantized load)."""
    from .config import PipelineQuantizationConfig

    if args.config is not None:
        return PipelineQuantizationConfig.from_json(Path(args.config).read_text())
    if args.backend is None:
        if args.kwargs or args.components:
            raise ValueError("--kwargs and --components describe a --backend; name one (see `quantkit backends`).")
        return None
    components = args.components
    if components is None:
        from .planning.roles import default_components
        from .planning.sources import read_model_index, resolve_source

        components = default_components(read_model_index(resolve_source(args.source, weights=False))[1]) or None
    kwargs = args.kwargs
    if not kwargs:  # the backend's first option at its default: the simple form needs one
        from .backends import get_backend

        adapter = get_backend(args.backend)
        first = next(iter(adapter.options))
        kwargs = {first: adapter.options[first].default}
    return PipelineQuantizationConfig(
        quant_backend=args.backend, quant_kwargs=kwargs, components_to_quantize=components
    )


def plan_command(args) -> int:
    from .planning import plan

    p = plan(
        args.source,
        _config(args),
        device=args.device,
        torch_dtype=args.dtype,
        height=args.height,
        width=args.width,
        offload=args.offload,
    )
    if args.json:
        frame = p.to_frame().reset_index()
        out = {
            "pipeline_class": p.pipeline_class,
            "device": p.device,
            "torch_dtype": p.torch_dtype,
            "bytes_before": p.bytes_before,
            "bytes_after": p.bytes_after,
            "components": json.loads(frame.to_json(orient="records")),
        }
        if p.peak is not None:
            out["peak"] = p.peak.to_dict()
        if args.layers:
            out["layers"] = json.loads(p.layers(args.layers).to_json(orient="records"))
        print(json.dumps(out, indent=1, default=str))
        return OK
    print(p)
    if args.layers:
        from .units import text_table

        frame = p.layers(args.layers)
        print(f"\nLinear layers of {args.layers}:")
        print(text_table(list(frame.columns), [[str(v) for v in row] for row in frame.itertuples(index=False)]))
    return OK


def fit_command(args) -> int:
    from .planning.fit import fit

    frame = fit(
        args.source,
        gpu=args.gpu,
        memory=args.memory,
        height=args.height,
        width=args.width or args.height,
        num_images=args.num_images,
        host_memory=args.host_memory,
    )
    if args.top:
        frame = frame.head(args.top)
    if args.json:
        print(json.dumps(json.loads(frame.to_json(orient="records")), indent=1))
    else:
        print(frame)
    return OK


def footprint_command(args) -> int:
    from .load import load_pipeline
    from .measure.footprint import footprint

    pipe = load_pipeline(args.folder, device=args.device, progress=False)
    frame = footprint(pipe)
    if args.json:
        print(json.dumps(json.loads(frame.reset_index().to_json(orient="records")), indent=1))
    else:
        print(frame)
    return OK


def backends_command(args) -> int:
    from .backends.status import backend_status, status_rows
    from .units import text_table

    if args.json:
        print(json.dumps(status_rows(), indent=1))
        return OK
    rows = [
        [s.backend, s.version or "not installed", s.cpu, s.cuda, ", ".join(s.cuda_only) or "-", s.bits]
        for s in backend_status()
    ]
    print(text_table(["backend", "version", "CPU here", "CUDA here", "CUDA only", "what"], rows))
    return OK


VERBS = {"plan": plan_command, "fit": fit_command, "footprint": footprint_command, "backends": backends_command}

__all__ = ["VERBS"]
