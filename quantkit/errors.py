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


BACKENDS_EXTRA = "quantkit[backends]"  # installs every backend library at once (pyproject's `backends` extra)


def pip_command(spec: str) -> str:
    """The shell command that installs `spec`, quoted so that `>=` is not a redirect: pip install 'gguf>=0.10.0'."""
    return f"pip install '{spec}'"


def install_hint(pip_spec: str, extra: str | None = None) -> str:
    """ "Install it with: pip install 'X'" (+ " (or every backend: pip install 'quantkit[backends]')")."""
    hint = f"Install it with: {pip_command(pip_spec)}"
    if extra:
        hint += f" (or every backend: {pip_command(extra)})"
    return hint


def is_importable(module: str) -> bool:
    """Whether `module` can be imported here, without importing it (a missing parent package counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):  # parent package missing; a module with __spec__ None
        return False


def user_path(value, what: str):
    """`Path(value).expanduser()`, with a `~name` for a user this machine does not know as a ValueError naming it.

    Args:
        value: a str or os.PathLike.
        what: the argument's name, e.g. "source" or "out".
    """
    from pathlib import Path

    try:
        return Path(value).expanduser()
    except RuntimeError:  # pathlib: "Could not determine home directory."
        raise ValueError(
            f"{what}={str(value)!r} starts with '~' but names no user this machine knows (nor the home folder); "
            "write the full path."
        ) from None


def require_package(module: str, pip_spec: str, purpose: str, extra: str | None = None) -> None:
    """Raise ImportError with the exact (quoted) pip command when `module` cannot be imported.

    Args:
        module: the import name, e.g. "optimum.quanto".
        pip_spec: the requirement to install, e.g. "optimum-quanto>=0.2.7".
        purpose: what needs it, e.g. "the 'quanto' backend".
        extra: a quantkit extra that installs it too (e.g. BACKENDS_EXTRA), offered beside the single package.
    """
    if not is_importable(module):
        raise ImportError(
            f"{purpose} needs the package {module!r}, which is not installed. {install_hint(pip_spec, extra)}.",
            name=module,
        )
