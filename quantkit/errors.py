"""Error helpers shared by the whole kit.

Every error quantkit raises names what was given, what is allowed, and how to fix it
(STYLE.md, principle 8). The helpers here build those sentences in one place so the
wording stays consistent and the tests can assert it.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Iterable


def did_you_mean(given: str, allowed: Iterable[str]) -> str:
    """Return " Did you mean 'x'?" for the closest allowed word, or "" when none is close."""
    close = difflib.get_close_matches(str(given), [str(a) for a in allowed], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def one_of(allowed: Iterable[str]) -> str:
    """Format allowed words as "'a', 'b' or 'c'"."""
    words = [repr(a) for a in allowed]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def require_package(module: str, pip_spec: str, purpose: str) -> None:
    """Raise ImportError with the exact (quoted) pip command when `module` cannot be imported.

    Args:
        module: the import name, e.g. "optimum.quanto".
        pip_spec: the requirement to install, e.g. "optimum-quanto>=0.2.7".
        purpose: what needs it, e.g. "the 'quanto' backend".
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # parent package missing
        found = False
    if not found:
        raise ImportError(
            f"{purpose} needs the package {module!r}, which is not installed. "
            f"Install it with: pip install '{pip_spec}'"
        )
