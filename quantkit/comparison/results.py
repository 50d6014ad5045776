"""`CompareResults`: what a comparison produced, rebuilt from its folder at any time."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .settings import RECORD_FIELDS
from .store import IMAGES_DIR, META_FILE, RESULTS_FILE, SENSITIVITY_DIR, read_records

# the frame's columns: the record's measurements, one row per variant (the index), the error last
_NOT_IN_FRAME = {"variant", "config", "error", "error_type", "latency_samples_s", "component_bytes", "notes"}
_NOT_IN_FRAME |= {"offload", "compile"}  # in the variant's label
FRAME_COLUMNS = [f for f in RECORD_FIELDS if f not in _NOT_IN_FRAME] + ["error"]


@dataclass
class CompareResults:
    """What `compare` produced; everything also lives in `folder`, from which `CompareResults.load` rebuilds it.

    Attributes:
        folder: the output folder.
        records: one dict per finished variant (the lines of results.jsonl).
        meta: the run's settings (source, prompts, seeds, call kwargs, device, dtype).
        sensitivity: {(variant, component): LayerSensitivity-like dict with a `frame`}.
    """

    folder: Path
    records: list[dict]
    meta: dict = field(default_factory=dict)
    sensitivity: dict = field(default_factory=dict)
    _images: dict = field(default_factory=dict, repr=False)

    @property
    def frame(self):
        """pandas DataFrame indexed by variant: status, quantization, bytes, load_s, latency_s, peak memory
        (bytes), psnr, ssim, lpips, clip_score, adherence, identical, error (CUDA columns only on CUDA)."""
        import pandas as pd

        rows = [{"variant": r["variant"], **{c: r.get(c) for c in FRAME_COLUMNS}} for r in self.records]
        frame = pd.DataFrame(rows, columns=["variant", *FRAME_COLUMNS]).set_index("variant")
        empty = [c for c in frame.columns if c.startswith("peak_") and "cuda" in c and frame[c].isna().all()]
        frame = frame.drop(columns=empty)
        for c in frame.columns:
            if c not in ("status", "quantization", "error"):
                frame[c] = pd.to_numeric(frame[c], errors="coerce")
        return frame

    @property
    def components(self):
        """pandas DataFrame of true bytes, variants × components (NaN where a variant failed)."""
        import pandas as pd

        rows = {r["variant"]: (r.get("component_bytes") or {}) for r in self.records}
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant")

    @property
    def images(self) -> dict:
        """{variant: array (N, H, W, 3) float32 in [0, 1]} for the variants that made images (loaded lazily)."""
        import numpy as np

        for r in self.records:
            name = r["variant"]
            if name not in self._images and r.get("images_npy"):
                path = self.folder / r["images_npy"]
                if path.is_file():
                    self._images[name] = np.load(path)
        return {r["variant"]: self._images[r["variant"]] for r in self.records if r["variant"] in self._images}

    @property
    def captions(self) -> list[str]:
        """One caption per image column: "prompt / seed"."""
        settings = self.meta.get("settings", {})
        return [f"{p} / {s}" for p in settings.get("prompts", []) for s in settings.get("seeds", [])]

    @property
    def reference(self) -> str | None:
        """The baseline variant the others are compared against."""
        return next((r["variant"] for r in self.records if r.get("config") is None), None)

    @property
    def failed(self) -> dict[str, str]:
        """{variant: error} of the variants that failed."""
        return {r["variant"]: r.get("error") for r in self.records if r.get("status") != "ok"}

    def save(
        self, folder: str | Path | None = None, *, formats: tuple[str, ...] = ("md", "html"), progress: bool = False
    ) -> Path:
        """Write results.csv, the plots (PNG) and report.md / report.html into `folder` (default: self.folder).

        With another folder, results.jsonl, meta.json, the images and sensitivity tables are copied there first.

        Returns:
            The folder.
        """
        from ..show.report import write_report

        folder = Path(folder) if folder is not None else self.folder
        if folder.resolve() != self.folder.resolve():
            folder.mkdir(parents=True, exist_ok=True)
            for name in (RESULTS_FILE, META_FILE):
                if (self.folder / name).is_file():
                    shutil.copy(self.folder / name, folder / name)
            for name in (IMAGES_DIR, SENSITIVITY_DIR):
                if (self.folder / name).is_dir():
                    shutil.copytree(self.folder / name, folder / name, dirs_exist_ok=True)
            other = CompareResults.load(folder)
            write_report(other, formats=formats, progress=progress)
            return folder
        write_report(self, formats=formats, progress=progress)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> CompareResults:
        """Rebuild the results of a (finished or interrupted) comparison from its folder."""
        folder = Path(folder)
        if not (folder / RESULTS_FILE).is_file() and not (folder / META_FILE).is_file():
            raise FileNotFoundError(f"{folder} holds no comparison ({RESULTS_FILE} and {META_FILE} are missing).")
        meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
        return cls(folder=folder, records=read_records(folder), meta=meta, sensitivity=read_sensitivity(folder))

    def __repr__(self) -> str:
        from ..show.report import text_summary

        return text_summary(self)

    def _repr_html_(self) -> str:
        from ..show.report import html_table

        return html_table(self)


def read_sensitivity(folder: Path) -> dict:
    import pandas as pd

    out = {}
    for meta_path in sorted((folder / SENSITIVITY_DIR).glob("*.json")):
        info = json.loads(meta_path.read_text())
        csv = meta_path.with_suffix(".csv")
        if csv.is_file():
            info["frame"] = pd.read_csv(csv, index_col="rank")
            out[(info["variant"], info["component"])] = info
    return out


__all__ = ["FRAME_COLUMNS", "CompareResults", "read_sensitivity"]
