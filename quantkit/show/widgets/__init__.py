"""Jupyter widgets over quantkit's library objects (ipywidgets 7.7 and 8.x; Colab ships 7.7).

- `ConfigBuilder`: build a PipelineQuantizationConfig with controls; see its plan and its code (quantkit and
  diffusers) update live.
- `CompareDashboard`: collect variants (from builders or presets), run `quantkit.compare` with a progress bar and
  a cancel button, and watch the table, the plots and the image grid fill in.
- `LayerInspector`: rank one quantized component's Linear layers by the error quantizing each adds; tick layers
  to keep in full precision and see what that does to size and quality.

Each is a small class that owns `.widget` and displays itself; every handler takes `change=None`, so code and
tests drive the widgets without a browser. Importing `quantkit` never imports this package (or ipywidgets).
"""

from .builder import ConfigBuilder, SpecEditor
from .dashboard import CompareDashboard
from .inspector import LayerInspector

__all__ = ["CompareDashboard", "ConfigBuilder", "LayerInspector", "SpecEditor"]
