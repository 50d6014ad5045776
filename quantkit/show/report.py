"""The report of a comparison: results.csv, PNG plots, and report.md / report.html that embed them.

`write_report(results)` writes into the results' folder:
    results.csv        the table (bytes, seconds, dB; one row per variant)
    memory.png         true bytes per component, stacked per variant
    peak_memory.png    peak RSS (or CUDA memory) per variant, with each worker's starting RSS
    quality.png        PSNR against total bytes, Pareto front marked (adherence.png likewise, when measured)
    images.png         the images, one row per variant
    sensitivity.png    per-layer error of the studied component (when a sensitivity study ran)
    report.md          the report in Markdown: what the run found (computed from the numbers), settings, table,
                       plots with what they show
    report.html        the same Markdown rendered by the `markdown` package (tables, fenced code), with the plots

Sizes are in binary units throughout (`quantkit.units.human_bytes`: KiB, MiB, GiB), said once at the top.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

from ..measure.sensitivity import measured_layers
from ..units import UNITS_NOTE, human_bytes, text_table

# (column of CompareResults.frame, header, formatter)
_COLUMNS = [
    ("quantization", "quantization", str),
    ("bytes", "weights", human_bytes),
    ("ratio", "× baseline", lambda v: f"{v:.2f}"),
    ("load_s", "load s", lambda v: f"{v:.2f}"),
    ("latency_s", "s / image", lambda v: f"{v:.3f}"),
    ("peak_load_rss", "peak RSS load", human_bytes),
    ("peak_gen_rss", "peak RSS gen.", human_bytes),
    ("peak_load_cuda_allocated", "CUDA alloc. load", human_bytes),
    ("peak_gen_cuda_allocated", "CUDA alloc. gen.", human_bytes),
    ("peak_gen_cuda_reserved", "CUDA reserved gen.", human_bytes),
    ("psnr", "PSNR dB", lambda v: "identical" if math.isinf(v) else f"{v:.1f}"),
    ("ssim", "SSIM", lambda v: f"{v:.4f}"),
    ("lpips", "LPIPS", lambda v: f"{v:.4f}"),
    ("clip_score", "CLIP", lambda v: f"{v:.2f}"),
    ("adherence", "adherence", lambda v: f"{v:.0%}"),
    ("error", "error", lambda v: str(v)[:120]),
]


def table_rows(results) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the results table as text; columns with no value at all are left out."""
    frame = results.frame.copy()
    base = results.reference
    if base in frame.index and frame.loc[base, "bytes"] == frame.loc[base, "bytes"]:
        frame["ratio"] = frame["bytes"] / frame.loc[base, "bytes"]
    if base in frame.index:
        for c in ("psnr", "ssim", "lpips"):
            if c in frame:
                frame[c] = frame[c].astype(object)
                frame.loc[base, c] = None  # the reference is not compared with itself
    cols = [(c, h, f) for c, h, f in _COLUMNS if c in frame and frame[c].notna().any()]
    headers = ["variant", *[h for _, h, _ in cols]]
    rows = []
    for name, row in frame.iterrows():
        cells = [str(name) + (" (reference)" if name == base else "")]
        for c, _, fmt in cols:
            v = row[c]
            cells.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt(v))
        rows.append(cells)
    return headers, rows


def text_summary(results) -> str:
    headers, rows = table_rows(results)
    settings = results.meta.get("settings", {})
    head = (
        f"CompareResults in {results.folder}: {len(results.records)} variants, "
        f"{len(settings.get('prompts', []))} prompts × {len(settings.get('seeds', []))} seeds on "
        f"{settings.get('device', '?')}"
    )
    return head + "\n" + text_table(headers, [[c if len(c) < 60 else c[:57] + "..." for c in r] for r in rows])


def md_text(text) -> str:
    """`text` escaped for Markdown: shown as written, never read as emphasis, code, links or HTML."""
    text = str(text).replace("\\", "\\\\").replace("\n", " ")
    text = re.sub(r"([`*\[\]#])", r"\\\1", text)
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)  # snake_case inside words stays as is
    return text.replace("&", "&amp;").replace("<", "&lt;")


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    def cell(x: str) -> str:
        return md_text(x).replace("|", "\\|")

    out = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_table(results) -> str:
    headers, rows = table_rows(results)
    return f"<p><b>CompareResults</b> in {html.escape(str(results.folder))}</p>" + _html_table(headers, rows)


def write_plots(results, folder: Path | None = None, *, progress: bool = False) -> dict[str, Path]:
    """Save every plot that has data as PNG into `folder` (default: the results' folder); {name: path}."""
    from .plots import plot_image_grid, plot_layer_error, plot_memory, plot_peak_memory, plot_quality_vs_bytes

    folder = Path(folder or results.folder)
    frame = results.frame
    device = results.meta.get("settings", {}).get("device", "cpu")
    figures = {}
    ok = frame[frame["status"] == "ok"]
    if len(ok):
        figures["memory"] = plot_memory(results.components.loc[[n for n in ok.index if n in results.components.index]])
        figures["peak_memory"] = plot_peak_memory(frame, device=device)
        if ok["psnr"].notna().any():
            figures["quality"] = plot_quality_vs_bytes(frame, "psnr", reference=results.reference)
        if "adherence" in ok and ok["adherence"].notna().any():
            figures["adherence"] = plot_quality_vs_bytes(frame, "adherence", reference=results.reference)
    images = results.images
    if images:
        figures["images"] = plot_image_grid(images, captions=results.captions)
    for (variant, component), info in results.sensitivity.items():
        figures["sensitivity"] = plot_layer_error(
            info["frame"], title=f"{component} in {variant}: {info.get('quantization', '')}"
        )
        break
    from tqdm.auto import tqdm

    paths = {}
    for name, fig in tqdm(figures.items(), desc="plots", total=len(figures), disable=not progress, leave=False):
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110)
        paths[name] = path
    return paths


_PLOT_TEXT = {
    "memory": (
        "Weights in memory",
        "True bytes of each component (quantized tensors taken apart into what they "
        "really store), stacked per variant.",
    ),
    "peak_memory": (
        "Peak memory",
        "Each variant runs in a fresh worker process. Above: each worker's resident "
        "set size (RSS) when it started — flat, so no variant inherits memory from the one before. "
        "Below: how far the peak RSS rose above that start while loading and while generating.",
    ),
    "quality": (
        "Quality against memory",
        "PSNR of each variant's images against the baseline's images for the "
        "same prompt and seed, against total bytes. The line joins the Pareto front: no other variant "
        "is both smaller and closer to the baseline.",
    ),
    "adherence": (
        "Prompt adherence against memory",
        "Fraction of images that show the color, shape, position and size their prompt asks for (shapes scorer).",
    ),
    "images": ("Images", "One row per variant; columns are prompt / seed."),
    "sensitivity": (
        "Per-layer sensitivity",
        "SQNR of each Linear layer's output when that layer alone is "
        "quantized, on the activations of the real pipeline (lowest = most error; red: the 3 worst).",
    ),
}


def _sections(results, plots: dict[str, Path]) -> list[tuple[str, str, str | None, str | None]]:
    """(title, Markdown text, image file, Markdown table or None) per section of the report."""
    frame = results.frame
    sections = []
    failed = results.failed
    if failed:
        text = "\n".join(f"- **{md_text(n)}**: {md_text(e)}" for n, e in failed.items())
        sections.append(
            ("Failed variants", "Recorded with their error; the other variants went on.\n\n" + text, None, None)
        )
    starts = frame["rss_start"].dropna() if "rss_start" in frame else []
    for key in ("memory", "peak_memory", "quality", "adherence", "images"):
        if key in plots:
            title, text = _PLOT_TEXT[key]
            if key == "peak_memory" and len(starts) > 1:
                text += (
                    f" Worker RSS at start: {human_bytes(starts.min())} to {human_bytes(starts.max())} "
                    f"(spread {human_bytes(starts.max() - starts.min())})."
                )
            if key == "quality":
                from ..comparison.pareto import front_variants

                front = front_variants(frame, "psnr", results.reference)
                text += f" On the front: {', '.join(md_text(n) for n in front)}."
            sections.append((title, text, plots[key].name, None))
    for (variant, component), info in results.sensitivity.items():
        layers = info["frame"]
        measured = measured_layers(layers)
        top = measured.head(10)
        rows = [
            [str(r.layer), f"{r.in_features}→{r.out_features}", f"{r.sqnr_db:.1f}", f"{r.rel_error:.4f}"]
            for r in top.itertuples()
        ]
        table = markdown_table(["layer", "shape", "SQNR dB", "relative error"], rows)
        worst = list(measured["layer"].head(3))
        text = (
            f"{md_text(repr(component))} under {md_text(info.get('quantization', variant))} (variant "
            f"{md_text(repr(variant))}), measured on {len(info.get('prompts', []))} prompt(s). "
            f"{_PLOT_TEXT['sensitivity'][1]} {len(measured)} layers measured; median SQNR "
            f"{measured['sqnr_db'].median():.1f} dB.\n\n"
            "To keep the most sensitive layers in full precision, name them in `modules_to_not_convert`:\n\n"
            "```python\nfrom quantkit.measure.sensitivity import keep_in_full_precision\n"
            f"config = keep_in_full_precision(config, {component!r}, {json.dumps(worst)})\n```"
        )
        kept = [r for r in results.records if str(r["variant"]).startswith(f"{variant}+keep")]
        for r in kept:
            base = next((x for x in results.records if x["variant"] == variant), {})
            text += (
                f"\n\nTried: **{md_text(r['variant'])}** — PSNR {_fmt(r.get('psnr'), '{:.1f}')} dB (was "
                f"{_fmt(base.get('psnr'), '{:.1f}')}), {human_bytes(r.get('bytes'))} (was "
                f"{human_bytes(base.get('bytes'))})."
            )
        sections.append((_PLOT_TEXT["sensitivity"][0], text, plots.get("sensitivity", Path("")).name or None, table))
        break
    return sections


def _fmt(v, pattern: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return "identical" if isinstance(v, float) and math.isinf(v) else pattern.format(v)


# -- what the run found ---------------------------------------------------------------------------------------


def _column(frame, name: str):
    """frame[name] as floats (NaN where missing); all NaN when the column is absent."""
    import pandas as pd

    if name not in frame:
        return pd.Series(float("nan"), index=frame.index)
    return pd.to_numeric(frame[name], errors="coerce").astype(float)


def _bold(name) -> str:
    return f"**{md_text(name)}**"


def findings(results) -> list[str]:
    """What the run found, in Markdown sentences computed from its numbers (the report's first section).

    Which variant is smallest, which is closest to the reference in PSNR (and which furthest), which is fastest;
    then where the numbers differ from what quantization is expected to do on a GPU, and why: quantized variants
    slower than the reference, and a peak memory that does not fall with the weights when the weights are a
    small part of it.

    Returns:
        Markdown list items ("- ..."); empty when no variant finished.
    """
    frame = results.frame
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        return []
    ref = results.reference if results.reference in ok.index else None
    device = str(results.meta.get("settings", {}).get("device") or "cpu")
    others = ok.drop(index=ref) if ref is not None else ok
    size, psnr, latency = _column(ok, "bytes"), _column(others, "psnr"), _column(ok, "latency_s")
    lines = []
    if size.notna().any():
        small = size.idxmin()
        text = f"Smallest: {_bold(small)}, {human_bytes(size[small])} of weights"
        if ref is not None and small != ref and size[ref] == size[ref]:
            text += f", {size[small] / size[ref]:.2f}× the reference {_bold(ref)} ({human_bytes(size[ref])})"
        lines.append(text + ".")
    if psnr.notna().any():
        best, worst = psnr.idxmax(), psnr.idxmin()
        if math.isinf(psnr[best]):
            text = f"Closest to the reference: {_bold(best)}, whose images are identical to the reference's"
        else:
            text = f"Closest to the reference: {_bold(best)}, PSNR {psnr[best]:.1f} dB"
        if worst != best:
            text += f"; furthest: {_bold(worst)}, PSNR {psnr[worst]:.1f} dB"
        lines.append(text + " (higher is closer; from about 40 dB the images look the same).")
    if latency.notna().any():
        fast = latency.idxmin()
        lines.append(f"Fastest: {_bold(fast)}, {latency[fast]:.3f} s per image.")
    if ref is not None:
        lines += _speed_findings(ok, ref, device, latency, size)
        lines += _memory_findings(ok, ref, device, size)
    return [f"- {line}" for line in lines]


def _speed_findings(ok, ref: str, device: str, latency, size) -> list[str]:
    ratios = (latency.drop(index=ref) / latency[ref]).dropna()
    if ratios.empty or not latency[ref] > 0:
        return []
    where = "on this CPU" if device == "cpu" else f"on {device}"
    slower, faster = ratios[ratios > 1.0], ratios[ratios <= 1.0]
    lo, hi = f"{ratios.min():.1f}×", f"{ratios.max():.1f}×"
    span = hi if lo == hi else f"{lo} to {hi}"
    if faster.empty:
        text = (
            f"Every quantized variant is slower than the reference {where} ({span} its {latency[ref]:.3f} s per "
            "image), although quantization is often expected to speed generation up. Quantized layers do extra work "
            "on every call (they unpack, or dequantize, their weights, or run int8 kernels); what they save, reading "
            "fewer bytes of weights from memory, speeds a model up only where that reading is the limit: large "
            "models, on GPUs."
        )
        if size[ref] == size[ref]:
            text += f" With {human_bytes(size[ref])} of weights it is not."
        return [text]
    if slower.empty:
        return [f"Every quantized variant is faster than the reference {where} ({span} its time per image)."]
    names = ", ".join(f"{_bold(n)} ({v:.1f}×)" for n, v in faster.sort_values().items())
    return [
        f"Faster than the reference {where}: {names}; the other {len(slower)} quantized variant"
        f"{'s are' if len(slower) > 1 else ' is'} slower (up to {slower.max():.1f}× its time per image)."
    ]


def _memory_findings(ok, ref: str, device: str, size) -> list[str]:
    cuda = device.startswith("cuda") and _column(ok, "peak_gen_cuda_allocated").notna().any()
    peak = _column(ok, "peak_gen_cuda_allocated" if cuda else "peak_gen_rss")
    what = "the peak CUDA memory allocated while generating" if cuda else "the peak RSS while generating"
    known = peak.notna() & size.notna()
    if not known.get(ref, False) or known.sum() < 2 or not peak[ref] > 0:
        return []
    small = size[known].idxmin()
    if small == ref:
        return []
    saved, change = size[ref] - size[small], peak[small] / peak[ref] - 1.0
    share = size[ref] / peak[ref]
    percent = f"{change:+.1%}" if abs(change) < 0.1 else f"{change:+.0%}"
    numbers = (
        f"{what} is {human_bytes(peak[ref])} for the reference and {human_bytes(peak[small])} for {_bold(small)} "
        f"({percent}), whose weights are {human_bytes(saved)} smaller"
    )
    if share >= 0.25:
        return [numbers[0].upper() + numbers[1:] + f"; the weights are {share:.0%} of the reference's peak."]
    text = f"Peak memory hardly follows the weights: {numbers}. The weights are only {share:.0%} of that peak"
    start = _column(ok, "rss_start").get(ref)
    if not cuda and start is not None and start == start:
        text += (
            f"; most of it is the process itself (Python with torch, diffusers and every backend imported: "
            f"{human_bytes(start)} before any weight is loaded) and the activations of generation"
        )
    elif cuda:
        text += "; the rest is activations and workspace"
    return [text + ". On a large model the weights are most of the memory, and the peak falls with them."]


def _settings_text(results) -> list[str]:
    s = results.meta.get("settings", {})
    env = next((r.get("environment") for r in results.records if r.get("environment")), None)
    env = dict(env or results.meta.get("host") or {})  # no variant finished: what the parent saw
    if s.get("device") == "cpu":
        env.setdefault("device_name", env.get("cpu", "?"))
    versions = env.get("versions", {})
    lines = [
        f"- source: `{str(s.get('source')).replace('`', '')}`",
        f"- {len(s.get('prompts', []))} prompts × {len(s.get('seeds', []))} seeds per variant; prompts: "
        + ", ".join(f"“{md_text(p)}”" for p in s.get("prompts", []))
        + f"; seeds {md_text(s.get('seeds'))}",
        f"- call arguments: {md_text(s.get('call_kwargs') or 'the pipeline’s generation defaults')}; dtype: "
        f"{md_text(s.get('torch_dtype') or 'as stored')}",
        f"- device: {md_text(s.get('device'))} ({md_text(env.get('device_name', '?'))}), "
        f"{env.get('torch_threads', '?')} torch threads; Python {env.get('python', '?')}",
        "- versions: " + ", ".join(f"{md_text(k)} {md_text(v)}" for k, v in versions.items() if v),
    ]
    from ..measure.environment import comparable

    envs = [r.get("environment") for r in results.records if r.get("environment")]
    if any(not comparable(envs[0], e) for e in envs[1:]):
        lines.append(
            "- **note**: the variants ran on different machines or versions (resumed elsewhere?): "
            "compare their timings with care."
        )
    return lines


_INTRO = (
    "Each variant ran in its own fresh worker process. Quality compares each variant's images with the "
    "baseline's images for the same prompt and seed (PSNR: higher is closer, 40 dB and up looks the same; "
    "SSIM: 1 is identical). Latency is the median seconds per image after a warm-up."
)
_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto;line-height:1.4}table{border-collapse:collapse;"
    "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%}code{background:#f4f4f4;padding:0 2px}"
    "pre{background:#f4f4f4;padding:6px}"
)


def report_markdown(results, plots: dict[str, Path] | None = None) -> str:
    """The report as Markdown: what the run found, the units, settings, the results table, then one section per
    plot in `plots` ({name: PNG path}, as `write_plots` returns) and the sensitivity study."""
    plots = plots or {}
    headers, rows = table_rows(results)
    found = findings(results)
    md = ["# Quantization comparison", ""]
    if found:
        md += ["## What this run found", "", *found, ""]
    md += [f"{UNITS_NOTE} Times are in seconds, PSNR in dB.", "", "## Settings", "", *_settings_text(results), ""]
    md += [_INTRO, "", "## Results", "", markdown_table(headers, rows), ""]
    for title, text, image, table in _sections(results, plots):
        md += [f"## {title}", "", text, ""]
        if table:
            md += [table, ""]
        if image:
            md += [f"![{title}]({image})", ""]
    return "\n".join(md)


def markdown_to_html(text: str, title: str = "Quantization comparison") -> str:
    """A standalone HTML page of Markdown `text`, rendered by the `markdown` package (tables, fenced code)."""
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code"], output_format="html")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(results, *, formats: tuple[str, ...] = ("md", "html"), progress: bool = False) -> list[Path]:
    """Write results.csv, the PNG plots and report.md / report.html into the results' folder.

    report.html is report.md rendered as HTML, so the two always say the same.

    Returns:
        The paths written.
    """
    folder = Path(results.folder)
    written = []
    csv = folder / "results.csv"
    results.frame.to_csv(csv)
    written.append(csv)
    plots = write_plots(results, folder, progress=progress)
    written += list(plots.values())
    md = report_markdown(results, plots)
    if "md" in formats:
        path = folder / "report.md"
        path.write_text(md)
        written.append(path)
    if "html" in formats:
        path = folder / "report.html"
        path.write_text(markdown_to_html(md))
        written.append(path)
    return written


__all__ = [
    "findings",
    "html_table",
    "markdown_table",
    "markdown_to_html",
    "md_text",
    "report_markdown",
    "table_rows",
    "text_summary",
    "write_plots",
    "write_report",
]
