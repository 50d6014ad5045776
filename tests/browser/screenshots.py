"""Write docs/widgets/*.png: the three widgets as JupyterLab shows them, screenshot in headless Chromium.

    python tests/browser/screenshots.py [--source PIPELINE] [--out docs/widgets]

Uses the embedded pipeline when it is there (else a tiny random FLUX pipeline, whose images are noise). Needs
what tests/test_browser.py needs (scripts/ci_browser_setup.sh). PNGs are reduced to a 256-colour palette to stay
small (< 150 KB each). Takes about a minute.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab  # noqa: E402

CELLS = [
    """import os
from quantkit.widgets import CompareDashboard, ConfigBuilder, LayerInspector

source = os.environ["QUANTKIT_TEST_SOURCE"] or None
builder = ConfigBuilder(source)
builder.backend.value = "torchao"
builder""",
    """dash = CompareDashboard(source, ["bnb-nf4", "quanto-int8", "torchao-int8wo", "gguf-Q4_0"], seeds=[0, 1],
                        use_lpips=False)
dash.run()
dash""",
    """inspector = LayerInspector(source, dash.variants["bnb-nf4"], prompts=["a red circle"], top=12, use_lpips=False)
inspector.keep_worst(3)
inspector.measure()
inspector""",
]
WIDGETS = {
    "config_builder": ".quantkit-config-builder",
    "compare_dashboard": ".quantkit-compare-dashboard",
    "layer_inspector": ".quantkit-layer-inspector",
}


def shrink(path: Path) -> int:
    """Re-save a PNG with a 256-colour palette; returns its size in bytes."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=None, help="pipeline folder (default: the embedded one, else tiny)")
    parser.add_argument("--out", default=str(lab.REPO / "docs" / "widgets"))
    args = parser.parse_args()
    if lab.missing():
        sys.exit(lab.missing())
    import quantkit

    root = Path(tempfile.mkdtemp(prefix="quantkit-shots-"))
    source = args.source
    if source is None and not quantkit.EMBEDDED_PIPELINE.is_dir():
        from quantkit.models.tiny import save_tiny_pipeline

        source = str(save_tiny_pipeline(root / "tiny-flux", "flux"))
    lab.write_notebook(root / "widgets.ipynb", CELLS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with lab.jupyterlab(root, env={"QUANTKIT_TEST_SOURCE": source or ""}) as (url, token):
        with lab.browser(width=1500, height=2800) as page:  # tall: every widget fits
            lab.open_and_run(page, url, token, "widgets.ipynb")
            page.keyboard.press("Control+b")  # hide the file browser: more room for the widgets
            for selector in WIDGETS.values():
                page.wait_for_selector(selector, timeout=300_000)
            lab.wait_until_idle(page, timeout_ms=300_000)
            assert page.get_by_text("Error displaying widget").count() == 0
            page.wait_for_timeout(1000)
            for name, selector in WIDGETS.items():
                path = out / f"{name}.png"
                page.locator(selector).first.screenshot(path=str(path))
                print(f"{path}: {shrink(path) / 1024:.0f} KB")


if __name__ == "__main__":
    main()
