"""Generation defaults stored beside a pipeline, and applied so that a plain `pipe(prompt)` uses them.

A diffusers pipeline's call defaults live in its `__call__` signature and suit the real model: a plain
FluxPipeline call draws 128 × vae_scale_factor pixels square (512×512 with our 4× VAE), runs 28 steps and pads
the T5 prompt to 512 tokens. A small model trained at 32×32 with 16 text tokens draws garbage at those settings.
So a pipeline folder may hold `generation_defaults.json`, the call kwargs it was made for:

    {"height": 32, "width": 32, "num_inference_steps": 20, "max_sequence_length": 16}

`read_generation_defaults(folder)` reads it; `apply_generation_defaults(pipe, defaults)` makes `pipe(prompt)`
fill in every kwarg the caller did not give. How: the instance's class is swapped for a thin subclass of its own
class (made once per class and cached) whose `__call__` adds the missing kwargs. The subclass keeps the class
name, so `isinstance(pipe, FluxPipeline)` holds and `save_pretrained` still writes "FluxPipeline" into
model_index.json — and it writes `generation_defaults.json` too.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULTS_FILE = "generation_defaults.json"

_SUBCLASSES: dict[type, type] = {}  # original pipeline class → its defaults-aware subclass


def read_generation_defaults(folder: str | Path) -> dict:
    """The kwargs in `folder/generation_defaults.json`, or {} when the folder has none.

    Raises:
        ValueError: the file exists but does not hold a JSON object.
    """
    path = Path(folder) / DEFAULTS_FILE
    if not path.is_file():
        return {}
    defaults = json.loads(path.read_text())
    if not isinstance(defaults, dict):
        raise ValueError(f"{path} must hold a JSON object of call kwargs, got {type(defaults).__name__}.")
    return defaults


def write_generation_defaults(folder: str | Path, defaults: dict) -> Path:
    """Write `defaults` to `folder/generation_defaults.json` (sorted keys, so diffs stay small)."""
    path = Path(folder) / DEFAULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(defaults, indent=2, sort_keys=True) + "\n")
    return path


def _subclass_with_defaults(cls: type) -> type:
    base = getattr(cls, "_quantkit_base_class", cls)  # applying twice must not stack subclasses
    if base not in _SUBCLASSES:

        def __call__(self, *args, **kwargs):
            for key, value in self.generation_defaults.items():
                kwargs.setdefault(key, value)  # an explicit call kwarg always wins
            return base.__call__(self, *args, **kwargs)

        def save_pretrained(self, save_directory, *args, **kwargs):
            result = base.save_pretrained(self, save_directory, *args, **kwargs)
            write_generation_defaults(save_directory, self.generation_defaults)
            return result

        _SUBCLASSES[base] = type(
            base.__name__,  # same name: model_index.json records the original class
            (base,),
            {
                "__call__": __call__,
                "save_pretrained": save_pretrained,
                "__module__": base.__module__,
                "__qualname__": base.__qualname__,
                "__doc__": base.__doc__,
                "_quantkit_base_class": base,
            },
        )
    return _SUBCLASSES[base]


def apply_generation_defaults(pipe, defaults: dict):
    """Make `pipe(prompt)` use `defaults` for every kwarg the call leaves out.

    Args:
        pipe: any diffusers pipeline (or other callable object whose class can be subclassed).
        defaults: call kwargs, e.g. `read_generation_defaults(folder)`. They replace earlier ones on this pipe.

    Returns:
        The same object, now an instance of a thin subclass of its class; `pipe.generation_defaults` holds the
        dict (edit it to change the defaults).
    """
    if not isinstance(defaults, dict):
        raise TypeError(f"defaults must be a dict of call kwargs, got {type(defaults).__name__}.")
    pipe.__class__ = _subclass_with_defaults(type(pipe))
    pipe.generation_defaults = dict(defaults)
    return pipe
