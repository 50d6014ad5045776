"""What the three widgets share: the display protocol, small HTML helpers, and figures as PNG bytes.

A quantkit widget is a plain class that owns `.widget` (the ipywidgets root) and shows itself through
`_ipython_display_`. The display bundle carries the widget view *and* a text summary as text/plain, so a notebook
run headless (nbconvert, nbval) or opened where widgets cannot render still shows what the widget holds.

Only widgets that exist in ipywidgets 7.7 (what Colab ships) and 8.x are used: Dropdown, SelectMultiple, Checkbox,
ToggleButtons, Text, Textarea, FloatText, IntText, HTML, Image, Button, IntProgress, VBox/HBox, Tab with set_title.
"""

from __future__ import annotations

import html
import io

import ipywidgets as W

IPYWIDGETS_MAJOR = int(W.__version__.split(".")[0])
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

# Styles used in the HTML panes (inline: JupyterLab, classic Notebook and Colab all keep inline styles).
GREY = "color:#8a8a8a"
BAD = "color:#b00020"
TABLE = "border-collapse:collapse;font-size:12px;margin:2px 0"
CELL = "border-bottom:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top"
MONO = "font-family:monospace"


class View:
    """Base of the quantkit widgets: `.widget` is the ipywidgets root; displaying the object displays it.

    Subclasses set `self.widget` and implement `summary()` (plain text: what a notebook without a widget
    front end shows).
    """

    widget: W.Widget

    def summary(self) -> str:
        return type(self).__name__

    def _ipython_display_(self, **kwargs):
        from IPython.display import display

        data = {
            "text/plain": self.summary(),
            WIDGET_VIEW: {"version_major": 2, "version_minor": 0, "model_id": self.widget.model_id},
        }
        display(data, raw=True)
        if hasattr(self.widget, "_handle_displayed"):  # ipywidgets 7: runs on_displayed callbacks
            self.widget._handle_displayed(**kwargs)

    def __repr__(self) -> str:
        return self.summary()

    def close(self) -> None:
        """Close this widget tree (its views disappear from the notebook)."""

        def walk(widget):
            for child in getattr(widget, "children", ()):
                walk(child)
            widget.close()

        walk(self.widget)


def esc(value) -> str:
    return html.escape(str(value))


def table_html(headers: list[str], rows: list[list[str]], row_styles: list[str] | None = None) -> str:
    """A small HTML table; cells are already-escaped HTML, `row_styles` one CSS string per row."""
    head = "".join(f"<th style='{CELL}'>{h}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        style = row_styles[i] if row_styles else ""
        cells = "".join(f"<td style='{CELL}'>{c}</td>" for c in row)
        body.append(f"<tr style='{style}'>{cells}</tr>")
    return f"<table style='{TABLE}'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def error_html(err: BaseException | str) -> str:
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return f"<div style='{BAD};white-space:pre-wrap'>{esc(text)}</div>"


def figure_png(fig, dpi: int = 80) -> bytes:
    """A matplotlib Figure as PNG bytes (for an Image widget), closed afterwards."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def set_visible(widget: W.Widget, visible: bool) -> None:
    widget.layout.display = "" if visible else "none"


def tab(children: list[W.Widget], titles: list[str]) -> W.Tab:
    """A Tab with titles, the way both ipywidgets 7 (set_title only) and 8 accept."""
    t = W.Tab(children=children)
    for i, title in enumerate(titles):
        t.set_title(i, title)
    return t


def source_label(source) -> str:
    return "the embedded pipeline" if source is None else str(source)


__all__ = ["IPYWIDGETS_MAJOR", "View", "error_html", "esc", "figure_png", "set_visible", "tab", "table_html"]
