"""The Jupyter widgets, as `quantkit.widgets.ConfigBuilder` etc. (they live in `quantkit.show.widgets`).

Importing this module imports ipywidgets; `import quantkit` alone does not.
"""

from .show.widgets import CompareDashboard, ConfigBuilder, LayerInspector, SpecEditor

__all__ = ["CompareDashboard", "ConfigBuilder", "LayerInspector", "SpecEditor"]
