"""Which Linear layers of a component a backend quantizes, and why the others stay in full precision."""

from __future__ import annotations

from ..config import QuantSpec


def skip_list(model, spec: QuantSpec) -> list[str]:
    """Module names the backend keeps in full precision in `model` (the user's list and the backend's policy)."""
    return spec.adapter.keep_modules(model, spec.kwargs)


def matches(name: str, patterns: list[str]) -> str | None:
    """The pattern that names module `name` (whole dotted segments), or None."""
    for p in patterns:
        if f".{p}." in f".{name}.":
            return p
    return None


def decide_layers(model, spec: QuantSpec, device: str) -> tuple[list[str], dict[str, str], int]:
    """(Linear layers to quantize, {layer kept in full precision: why}, number of Linear layers)."""
    import torch

    skip = skip_list(model, spec)
    chosen, kept, total = [], {}, 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        total += 1
        hit = matches(name, skip)
        why = (
            f"in the skip list ({hit!r})"
            if hit
            else spec.adapter.layer_problem(spec.kwargs, module.in_features, module.out_features, device, name)
        )
        if why:
            kept[name] = why
        else:
            chosen.append(name)
    return chosen, kept, total


__all__ = ["decide_layers", "matches", "skip_list"]
