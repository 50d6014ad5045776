"""SpecEditor: the controls of one backend and its options (the building block of ConfigBuilder).

One dropdown per option that has a set of choices (the adapter's `option_choices`), a checkbox per
True/False option, a text field for module lists and paths. Choices this device cannot run are marked ✗ with
the reason, from the adapters' own `device_problem` and validation.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as W

from ...backends import REGISTRY, get_backend
from ...config import QuantSpec
from ._base import BAD, GREY, IPYWIDGETS_MAJOR, View, esc

MARK = " ✗"  # appended to a choice this device cannot run (reason in the notes below the controls)
DEFAULT = ""  # dropdown value that stands for an option's default None ("use the pipeline's dtype")
WIDE = {"description_width": "initial"}
CODE_CSS = (
    "<style>.quantkit-code textarea{font-family:monospace;font-size:12px;white-space:pre}"
    ".quantkit-plan td,.quantkit-plan th{font-size:12px}</style>"
)


def option_choices(adapter, name: str) -> tuple | None:
    """The values a dropdown offers for an option (the adapter decides: its choices, the dtypes, shortcuts)."""
    return adapter.option_choices(name)


def choice_problem(adapter, kwargs: dict[str, Any], device: str) -> str | None:
    """Why these kwargs cannot run on `device` (the adapter's validation, then its device check), or None."""
    try:
        canonical = adapter.normalize_kwargs(kwargs)
    except (ValueError, TypeError) as err:
        return str(err)
    problem = adapter.device_problem(canonical, device)
    return problem.reason if problem else None


def backend_problem(adapter) -> str | None:
    """Why a backend cannot be used here at all (its package is missing), or None."""
    try:
        adapter.require()
    except ImportError as err:
        return str(err)
    return None


def _note(text: str, flagged: dict[str, str] | None = None, *, chosen: bool = False) -> str:
    """One line under the controls: a chosen choice's reason in red, or a grey list of flagged choices whose
    reasons show on hover."""
    if chosen:
        return f"<div style='{BAD};font-size:11px'>✗ {esc(text)}</div>"
    why = "\n".join(f"{k}: {v}" for k, v in (flagged or {}).items())
    names = ", ".join(flagged or {}) if not text.startswith("backend") else ""
    return (
        f"<div style='{GREY};font-size:11px' title='{esc(why)}'>✗ not on this device or setup: "
        f"{esc(text)} {esc(names)} (hover for why)</div>"
    )


def _tooltip(widget: W.Widget, text: str) -> W.Widget:
    if IPYWIDGETS_MAJOR >= 8:
        widget.tooltip = text
    else:
        widget.description_tooltip = text
    return widget


class SpecEditor(View):
    """One backend and its options as controls; `.value` is the `QuantSpec` they describe.

    Args:
        backend: the backend shown first (a key of quantkit.BACKENDS).
        kwargs: option values to start from (either library's spelling).
        device: the device whose limits mark choices with ✗.
        on_change: called with no argument after any control changes.

    Attributes:
        backend: the backend Dropdown.
        options: {option name: its control}, rebuilt when the backend changes.
        notes: HTML with the reasons behind every ✗.
    """

    def __init__(self, backend: str = "quanto", kwargs: dict | None = None, *, device: str = "cpu", on_change=None):
        self.device = device
        self._on_change = on_change
        self._quiet = False
        self.backend = W.Dropdown(options=list(REGISTRY), value=get_backend(backend).name, description="backend")
        self.options: dict[str, W.Widget] = {}
        self.options_box = W.HBox(layout=W.Layout(flex_flow="row wrap"))
        self.notes = W.HTML()
        self.widget = W.VBox(
            [W.HBox([self.backend, self.options_box], layout=W.Layout(flex_flow="row wrap")), self.notes]
        )
        self.backend.observe(self.on_backend, names="value")
        self._build(get_backend(backend).normalize_kwargs(kwargs or {}))

    # -- controls -----------------------------------------------------------------------------------------
    @property
    def adapter(self):
        return get_backend(self.backend.value)

    def _control(self, name: str, value: Any) -> W.Widget:
        opt = self.adapter.options[name]
        choices = option_choices(self.adapter, name)
        if choices is not None:
            options = [(str(c), c) for c in choices]
            if opt.default is None:
                options.insert(0, ("(default)", DEFAULT))
            current = DEFAULT if value is None else value
            if current not in [v for _, v in options]:  # e.g. a torchao config object: not in the dropdown
                options.append((type(current).__name__, current))
            control = W.Dropdown(options=options, value=current, description=name, style=WIDE)
        elif opt.kind == "bool":
            control = W.Checkbox(value=bool(value), description=name, indent=False)
        elif opt.kind == "float":
            control = W.FloatText(value=float(value if value is not None else 0.0), description=name, style=WIDE)
        else:  # "list" (module names), "path", free values: text, applied on Enter / leaving the field
            text = ", ".join(value) if isinstance(value, list | tuple) else ("" if value is None else str(value))
            control = W.Text(value=text, description=name, placeholder=opt.doc, continuous_update=False, style=WIDE)
        return _tooltip(control, opt.doc)

    def _build(self, kwargs: dict[str, Any]) -> None:
        """(Re)create one control per option of the current backend, filled from canonical `kwargs`."""
        for control in self.options.values():
            control.close()
        resolved = self.adapter.resolved(kwargs)
        self.options = {name: self._control(name, resolved[name]) for name in self.adapter.options}
        for control in self.options.values():
            control.observe(self.on_option, names="value")
        self.options_box.children = list(self.options.values())
        self._relabel()

    def set(self, backend: str, kwargs: dict | None = None) -> None:
        """Show `backend` with `kwargs` (both spellings accepted) without firing a change per control.

        Raises:
            TypeError / ValueError: an unknown backend, kwargs that are not a dict, an option it does not take.
        """
        kwargs = get_backend(backend).normalize_kwargs({} if kwargs is None else kwargs)
        self._quiet = True
        try:
            self.backend.value = get_backend(backend).name
            self._build(kwargs)
        finally:
            self._quiet = False

    def set_device(self, device: str) -> None:
        """Mark the choices `device` ("cpu", "cuda[:N]", "mps") cannot run (a device planned for need not be here)."""
        from ...devices import parse_device

        self.device = parse_device(device)
        self._relabel()

    # -- reading the controls -----------------------------------------------------------------------------
    def _read(self, name: str) -> Any:
        opt = self.adapter.options[name]
        value = self.options[name].value
        if isinstance(self.options[name], W.Text):
            if opt.kind == "list":
                return [v.strip() for v in value.replace("\n", ",").split(",") if v.strip()] or None
            return value.strip() or None
        return None if value == DEFAULT and opt.default is None and isinstance(value, str) else value

    @property
    def kwargs(self) -> dict[str, Any]:
        """The options as quant_kwargs: the backend's main (first) option always, the others when not default."""
        out = {}
        for i, (name, opt) in enumerate(self.adapter.options.items()):
            value = self._read(name)
            if i == 0 or (value is not None and value != opt.default):
                out[name] = value
        return out

    @property
    def value(self) -> QuantSpec:
        """The QuantSpec of the current choices (raises ValueError for a combination the backend refuses)."""
        return QuantSpec(self.backend.value, **self.kwargs)

    # -- ✗ marks --------------------------------------------------------------------------------------------
    def _relabel(self) -> None:
        """Mark every backend and option choice this device cannot run (✗), and say why below the controls:
        in full and in red for a chosen one, as a short grey list (reasons on hover) for the others."""
        notes = []
        labels = []
        for name, adapter in REGISTRY.items():
            why = backend_problem(adapter)
            labels.append((name + (MARK if why else ""), name))
            if why:
                notes.append(
                    _note(why, chosen=name == self.backend.value)
                    if name == self.backend.value
                    else _note(f"backend {name}", {name: why})
                )
        self._set_options(self.backend, labels)
        kwargs = {n: v for n, v in ((n, self._read(n)) for n in self.options) if v is not None}
        for name, control in self.options.items():
            if option_choices(self.adapter, name) is None or not isinstance(control, W.Dropdown):
                continue
            others = {k: v for k, v in kwargs.items() if k != name}
            if choice_problem(self.adapter, others, self.device) is not None:
                others = {}  # the rest is invalid already: judge each choice of this option on its own
            labels, flagged = [], {}
            for label, value in control.options:
                why = None if value == DEFAULT else choice_problem(self.adapter, {**others, name: value}, self.device)
                labels.append((label.removesuffix(MARK) + (MARK if why else ""), value))
                if why and control.value == value:
                    notes.append(_note(f"{name}={value}: {why}", chosen=True))
                elif why:
                    flagged[str(value)] = why
            self._set_options(control, labels)
            if flagged:
                notes.append(_note(f"{name}", flagged))
        self.notes.value = "".join(notes)

    def _set_options(self, dropdown: W.Dropdown, options: list[tuple[str, Any]]) -> None:
        """Replace a dropdown's (label, value) pairs, keeping its value and firing no handler."""
        if getattr(dropdown, "_quantkit_options", None) == options:
            return
        value, quiet = dropdown.value, self._quiet
        self._quiet = True
        try:
            dropdown.options = options
            dropdown.value = value
            dropdown._quantkit_options = options
        finally:
            self._quiet = quiet

    # -- handlers -------------------------------------------------------------------------------------------
    def on_backend(self, change=None) -> None:
        """The backend changed: new option controls (at the backend's defaults), then notify."""
        if self._quiet:
            return
        self._build({})
        self._notify()

    def on_option(self, change=None) -> None:
        if self._quiet:
            return
        self._relabel()
        self._notify()

    def _notify(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def summary(self) -> str:
        try:
            return repr(self.value)
        except (ValueError, TypeError) as err:
            return f"SpecEditor({self.backend.value!r}): {err}"


__all__ = ["DEFAULT", "MARK", "WIDE", "SpecEditor", "backend_problem", "choice_problem", "option_choices"]
