"""What a plan is made of: `ComponentPlan` per component, `LoadPlan` for the pipeline, `Loader` values.

A plan is a value to look at: printing it (or showing it in a notebook) says per component its
library, class, backend and concrete config object, the loader, how many Linear layers are
quantized, the bytes before and after, and, when it cannot run on the target device, why and what
to do instead (a `quantkit.problems.Problem`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ..config import PipelineQuantizationConfig, QuantSpec
from ..problems import Problem
from ..units import human_bytes, text_table


class Loader(str, Enum):
    """How `load_pipeline` gets a component (the value is what the plan prints)."""

    FROM_PRETRAINED = "from_pretrained"  # unquantized: diffusers' / transformers' own loader
    STREAM = "quantkit streaming loader"  # safetensors, one tensor at a time, quantized as it arrives
    RESTORE = "quantkit restore"  # a folder written by save_pipeline: already quantized tensors
    GGUF_WRITTEN = "GGUF file (quantkit's) -> quantkit streaming loader"
    GGUF_STREAM = "GGUF file -> quantkit streaming loader"  # a published file in the component's own names
    GGUF_SINGLE_FILE = "GGUF file -> diffusers from_single_file"  # a published file in the original names

    def __str__(self) -> str:
        return self.value


@dataclass
class ComponentPlan:
    """What load_pipeline will do with one component."""

    name: str
    library: str | None
    class_name: str
    folder: Path
    is_model: bool = False
    spec: QuantSpec | None = None
    config: Any = None  # the native diffusers/transformers config object (None: unquantized, or none exists)
    loader: Loader = Loader.FROM_PRETRAINED
    issue: Problem | None = None  # why it cannot be loaded as planned (None: it can)
    params: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    layers_total: int = 0  # nn.Linear layers in the model
    quantized_layers: list[str] = field(default_factory=list)
    skipped_layers: dict[str, str] = field(default_factory=dict)  # layer -> why it stays in full precision
    layer_types: dict[str, str] = field(default_factory=dict)  # quantized layer -> what it becomes (and why)

    @property
    def quantization(self) -> str:
        return self.spec.label() if self.spec else "-"

    @property
    def supported(self) -> bool:
        return self.issue is None

    @property
    def problem(self) -> str | None:
        """Why it cannot run as planned, in words (None when it can)."""
        return self.issue.reason if self.issue else None

    @property
    def alternative(self) -> str | None:
        """What to do instead, in words: the install command when installing is the fix, else the fix."""
        if self.issue is None:
            return None
        return self.issue.pip_command or self.issue.fix or None


@dataclass
class LoadPlan:
    """The per-component plan of a quantized load. `to_frame()` gives it as a DataFrame."""

    source: str
    folder: Path
    pipeline_class: str
    device: str
    torch_dtype: str | None
    config: PipelineQuantizationConfig | None
    components: dict[str, ComponentPlan]
    peak: Any = None  # a PeakEstimate when plan() was given height/width (see predict_peak)

    @property
    def quantized(self) -> list[str]:
        return [n for n, c in self.components.items() if c.spec is not None]

    def libraries(self) -> dict[str, str]:
        """{model component: library}, e.g. for PipelineQuantizationConfig.to_diffusers()."""
        return {n: c.library for n, c in self.components.items() if c.is_model}

    @property
    def bytes_before(self) -> int:
        return sum(c.bytes_before for c in self.components.values())

    @property
    def bytes_after(self) -> int:
        return sum(c.bytes_after for c in self.components.values())

    def predict_peak(
        self,
        height: int = 1024,
        width: int | None = None,
        num_images: int = 1,
        offload: str | None = None,
        *,
        headers: dict | None = None,
    ):
        """The predicted peak memory of loading this plan and drawing `num_images` at height × width
        (`quantkit.planning.peak.predict_peak`, itemized: weights resident, activations, VAE decode, context).

        Args:
            headers: {component: tensor headers}, when the folder holds no weights (plan() passes them).
        """
        from .peak import predict_peak
        from .sizing import sizes_from_plan

        if headers is None:
            from .sources import component_headers

            headers = {n: component_headers(self.folder, n) for n, c in self.components.items() if c.is_model}
        return predict_peak(
            sizes_from_plan(self, headers=headers),
            device=self.device,
            height=height,
            width=width or height,
            num_images=num_images,
            offload=offload,
            pipeline_class=self.pipeline_class,
            dtype=self.torch_dtype or "bfloat16",
        )

    def layers(self, component: str):
        """pandas DataFrame, one row per Linear layer of `component` the plan decided on: what it becomes
        (e.g. "Q6_K (FFN down projection: Q4_K_M raises it from Q4_K to Q6_K)") or why it stays in full precision.

        Raises:
            ValueError: a component that is not quantized in this plan, naming the ones that are.
        """
        import pandas as pd

        if component not in self.components or self.components[component].spec is None:
            raise ValueError(f"{component!r} is not quantized in this plan; quantized: {self.quantized or 'none'}.")
        c = self.components[component]
        rows = [
            {"layer": n, "status": "quantized", "quantization": c.layer_types.get(n, c.quantization)}
            for n in c.quantized_layers
        ]
        rows += [{"layer": n, "status": "full precision", "quantization": why} for n, why in c.skipped_layers.items()]
        return pd.DataFrame(rows, columns=["layer", "status", "quantization"])

    def problems(self) -> dict[str, str]:
        """{component: why it cannot be loaded as planned}."""
        return {n: c.problem for n, c in self.components.items() if not c.supported}

    def issues(self) -> dict[str, Problem]:
        """{component: Problem} — the same as `problems()`, as values (kind, reason, fix, install)."""
        return {n: c.issue for n, c in self.components.items() if c.issue is not None}

    def check(self) -> None:
        """Raise when any component cannot be loaded as planned, naming what to do instead: the exception
        type follows the problem's kind (ImportError for a missing package, RuntimeError for hardware,
        ValueError otherwise)."""
        for c in self.components.values():
            if c.issue is not None:
                subject = f"Cannot quantize {c.name!r} ({c.class_name}) with {c.quantization} on {self.device}"
                raise c.issue.error(subject)

    def to_frame(self):
        """pandas DataFrame indexed by component: library, class, quantization, layers, bytes before/after."""
        import pandas as pd

        rows = []
        for c in self.components.values():
            rows.append(
                {
                    "component": c.name,
                    "library": c.library,
                    "class": c.class_name,
                    "quantization": c.quantization,
                    "loader": str(c.loader),
                    "layers_quantized": len(c.quantized_layers),
                    "layers_total": c.layers_total,
                    "params": c.params,
                    "bytes_before": c.bytes_before,
                    "bytes_after": c.bytes_after,
                    "supported": c.supported,
                    "problem": c.problem or "",
                }
            )
        return pd.DataFrame(rows).set_index("component")

    _HEADERS = ["component", "class", "quantization", "linear layers", "bytes", "loader", "runs here"]

    def _rows(self) -> list[list[str]]:
        rows = []
        for c in self.components.values():
            layers = f"{len(c.quantized_layers)}/{c.layers_total}" if c.spec else "-"
            status = "ok" if c.supported else f"NO: {c.problem}"
            size = f"{human_bytes(c.bytes_before)} -> {human_bytes(c.bytes_after)}" if c.is_model else "-"
            loader = str(c.loader) if c.is_model else "-"
            rows.append([c.name, c.class_name, c.quantization, layers, size, loader, status])
        return rows

    def __repr__(self) -> str:
        head = (
            f"LoadPlan for {self.pipeline_class} from {self.source} on {self.device}"
            f" ({self.torch_dtype or 'checkpoint dtype'}): {human_bytes(self.bytes_before)} -> "
            f"{human_bytes(self.bytes_after)}"
        )
        out = head + "\n" + text_table(self._HEADERS, self._rows())
        if self.peak is not None:
            out += "\n" + repr(self.peak)
        return out

    def _repr_html_(self) -> str:
        from html import escape

        cells = "".join(f"<th>{escape(h)}</th>" for h in self._HEADERS)
        body = "".join("<tr>" + "".join(f"<td>{escape(str(x))}</td>" for x in r) + "</tr>" for r in self._rows())
        return (
            f"<p><b>LoadPlan</b> {escape(self.pipeline_class)} on {escape(self.device)}: "
            f"{human_bytes(self.bytes_before)} &rarr; {human_bytes(self.bytes_after)}</p>"
            f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"
        )


__all__ = ["ComponentPlan", "LoadPlan", "Loader"]
