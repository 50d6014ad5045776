"""The report of a comparison: results.csv, PNG plots, and report.md / report.html that embed them.

`write_report(results)` writes into the results' folder:
    results.csv        the table (bytes, seconds, dB; one row per variant)
    memory.png         true bytes per component, stacked per variant
    peak_memory.png    peak RSS (or CUDA memory) per variant, with each worker's starting RSS
    quality.png        PSNR against total bytes, Pareto front marked (adherence.png likewise, when measured)
    images.png         the images, one row per variant
    sensitivity.png    per-layer error of the studied component (when a sensitivity study ran)
    report.md, report.html
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from ..units import human_bytes, text_table

MB = 1024 * 1024

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
    head = (f"CompareResults in {results.folder}: {len(results.records)} variants, "
            f"{len(settings.get('prompts', []))} prompts × {len(settings.get('seeds', []))} seeds on "
            f"{settings.get('device', '?')}")
    return head + "\n" + text_table(headers, [[c if len(c) < 60 else c[:57] + "..." for c in r] for r in rows])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

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
        figures["sensitivity"] = plot_layer_error(info["frame"], title=f"{component} in {variant}: "
                                                  f"{info.get('quantization', '')}")
        break
    from tqdm.auto import tqdm

    paths = {}
    for name, fig in tqdm(figures.items(), desc="plots", total=len(figures), disable=not progress, leave=False):
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110)
        paths[name] = path
    return paths


_PLOT_TEXT = {
    "memory": ("Weights in memory", "True bytes of each component (quantized tensors taken apart into what they "
               "really store), stacked per variant."),
    "peak_memory": ("Peak memory", "Each variant runs in a fresh worker process. Above: each worker's resident "
                    "set size (RSS) when it started — flat, so no variant inherits memory from the one before. "
                    "Below: how far the peak RSS rose above that start while loading and while generating."),
    "quality": ("Quality against memory", "PSNR of each variant's images against the baseline's images for the "
                "same prompt and seed, against total bytes. The line joins the Pareto front: no other variant "
                "is both smaller and closer to the baseline."),
    "adherence": ("Prompt adherence against memory", "Fraction of images that show the color, shape, position "
                  "and size their prompt asks for (shapes scorer)."),
    "images": ("Images", "One row per variant; columns are prompt / seed."),
    "sensitivity": ("Per-layer sensitivity", "SQNR of each Linear layer's output when that layer alone is "
                    "quantized, on the activations of the real pipeline (lowest = most error; red: the 3 worst)."),
}


def _sections(results, plots: dict[str, Path]) -> list[tuple[str, str, str | None, str | None]]:
    """(title, text, image file, table markdown-or-None) per section, shared by the md and html writers."""
    frame = results.frame
    sections = []
    failed = results.failed
    if failed:
        text = "\n".join(f"- **{n}**: {e}" for n, e in failed.items())
        sections.append(("Failed variants", "Recorded with their error; the other variants went on.\n\n" + text,
                         None, None))
    starts = frame["rss_start"].dropna() if "rss_start" in frame else []
    for key in ("memory", "peak_memory", "quality", "adherence", "images"):
        if key in plots:
            title, text = _PLOT_TEXT[key]
            if key == "peak_memory" and len(starts) > 1:
                text += (f" Worker RSS at start: {human_bytes(starts.min())} to {human_bytes(starts.max())} "
                         f"(spread {human_bytes(starts.max() - starts.min())}).")
            if key == "quality":
                from .plots import pareto_front

                ok = frame[frame["status"] == "ok"]
                q = [1e9 if math.isinf(v) else v for v in ok["psnr"].fillna(float("nan"))]
                front = [ok.index[i] for i in pareto_front(list(ok["bytes"]), q)]
                if results.reference in ok.index and results.reference not in front:
                    front.append(results.reference)
                text += f" On the front: {', '.join(map(str, front))}."
            sections.append((title, text, plots[key].name, None))
    for (variant, component), info in results.sensitivity.items():
        layers = info["frame"]
        measured = layers[layers["status"] == "quantized"].dropna(subset=["sqnr_db"])
        top = measured.head(10)
        rows = [[str(r.layer), f"{r.in_features}→{r.out_features}", f"{r.sqnr_db:.1f}", f"{r.rel_error:.4f}"]
                for r in top.itertuples()]
        table = markdown_table(["layer", "shape", "SQNR dB", "relative error"], rows)
        worst = list(measured["layer"].head(3))
        text = (f"{component!r} under {info.get('quantization', variant)} (variant {variant!r}), measured on "
                f"{len(info.get('prompts', []))} prompt(s). {_PLOT_TEXT['sensitivity'][1]} "
                f"{len(measured)} layers measured; median SQNR {measured['sqnr_db'].median():.1f} dB.\n\n"
                "To keep the most sensitive layers in full precision, name them in `modules_to_not_convert`:\n\n"
                "```python\nfrom quantkit.measure.sensitivity import keep_in_full_precision\n"
                f"config = keep_in_full_precision(config, {component!r}, {json.dumps(worst)})\n```")
        kept = [r for r in results.records if str(r["variant"]).startswith(f"{variant}+keep")]
        for r in kept:
            base = next((x for x in results.records if x["variant"] == variant), {})
            text += (f"\n\nTried: **{r['variant']}** — PSNR {_fmt(r.get('psnr'), '{:.1f}')} dB (was "
                     f"{_fmt(base.get('psnr'), '{:.1f}')}), {human_bytes(r.get('bytes'))} (was "
                     f"{human_bytes(base.get('bytes'))}).")
        sections.append((_PLOT_TEXT["sensitivity"][0], text, plots.get("sensitivity", Path("")).name or None,
                         table))
        break
    return sections


def _fmt(v, pattern: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return "identical" if isinstance(v, float) and math.isinf(v) else pattern.format(v)


def _settings_text(results) -> list[str]:
    s = results.meta.get("settings", {})
    env = next((r.get("environment") for r in results.records if r.get("environment")), None)
    env = env or results.meta.get("host") or {}  # no variant finished: what the parent saw
    if s.get("device") == "cpu":
        env.setdefault("device_name", env.get("cpu", "?"))
    versions = env.get("versions", {})
    lines = [f"- source: `{s.get('source')}`",
             f"- {len(s.get('prompts', []))} prompts × {len(s.get('seeds', []))} seeds per variant; prompts: "
             + ", ".join(f"“{p}”" for p in s.get("prompts", [])) + f"; seeds {s.get('seeds')}",
             f"- call arguments: {s.get('call_kwargs') or 'the pipeline’s generation defaults'}; dtype: "
             f"{s.get('torch_dtype') or 'as stored'}",
             f"- device: {s.get('device')} ({env.get('device_name', '?')}), {env.get('torch_threads', '?')} torch "
             f"threads; Python {env.get('python', '?')}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v)]
    from ..measure.environment import comparable

    envs = [r.get("environment") for r in results.records if r.get("environment")]
    if any(not comparable(envs[0], e) for e in envs[1:]):
        lines.append("- **note**: the variants ran on different machines or versions (resumed elsewhere?): "
                     "compare their timings with care.")
    return lines


def write_report(results, *, formats: tuple[str, ...] = ("md", "html"), progress: bool = False) -> list[Path]:
    """Write results.csv, the PNG plots and report.md / report.html into the results' folder.

    Returns:
        The paths written.
    """
    folder = Path(results.folder)
    frame = results.frame
    written = []
    csv = folder / "results.csv"
    frame.to_csv(csv)
    written.append(csv)
    plots = write_plots(results, folder, progress=progress)
    written += list(plots.values())
    headers, rows = table_rows(results)
    sections = _sections(results, plots)
    settings = _settings_text(results)
    intro = ("Each variant ran in its own fresh worker process. Quality compares each variant's images with the "
             "baseline's images for the same prompt and seed (PSNR: higher is closer, 40 dB and up looks the same; "
             "SSIM: 1 is identical). Latency is the median seconds per image after a warm-up.")
    if "md" in formats:
        md = ["# Quantization comparison", "", *settings, "", intro, "", "## Results", "",
              markdown_table(headers, rows), ""]
        for title, text, image, table in sections:
            md += [f"## {title}", "", text, ""]
            if table:
                md += [table, ""]
            if image:
                md += [f"![{title}]({image})", ""]
        path = folder / "report.md"
        path.write_text("\n".join(md))
        written.append(path)
    if "html" in formats:
        body = [f"<h1>Quantization comparison</h1><ul>{''.join(f'<li>{html.escape(s[2:])}</li>' for s in settings)}"
                f"</ul><p>{html.escape(intro)}</p><h2>Results</h2>", _html_table(headers, rows)]
        for title, text, image, table in sections:
            body.append(f"<h2>{html.escape(title)}</h2>")
            for para in text.split("\n\n"):
                if para.startswith("```"):
                    code = para.strip("`").removeprefix("python\n")
                    body.append(f"<pre><code>{html.escape(code)}</code></pre>")
                else:
                    body.append(f"<p>{html.escape(para).replace(chr(10), '<br>')}</p>")
            if table:
                lines = [ln for ln in table.splitlines() if not ln.startswith("|---")]
                cells = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]
                body.append(_html_table(cells[0], cells[1:]))
            if image:
                body.append(f'<p><img src="{html.escape(image)}" alt="{html.escape(title)}"></p>')
        style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
                 "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
                 "td:first-child,th:first-child{text-align:left}img{max-width:100%}")
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Quantization comparison</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
        path = folder / "report.html"
        path.write_text(page)
        written.append(path)
    return written


__all__ = ["html_table", "markdown_table", "table_rows", "text_summary", "write_plots", "write_report"]
