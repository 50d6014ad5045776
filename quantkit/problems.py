"""Decisions about what cannot run, as values: a `Problem` has a kind, a reason and a fix.

The plan records a `Problem` per component that cannot be loaded as asked (a missing package, a
backend that needs a GPU, a format that cannot take the layers); `load_pipeline` raises it before
any weight is read. The exception type follows from the kind, never from the wording, and an
install command travels as data (`install`), so the widgets and the CLI can show it without
parsing a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .errors import install_hint, is_importable, pip_command


class ProblemKind(Enum):
    """Why something cannot run, and so which exception says it."""

    MISSING_PACKAGE = "missing package"  # ImportError, with the pip command
    NEEDS_HARDWARE = "needs other hardware"  # RuntimeError: e.g. a CUDA-only kernel on a CPU
    UNSUPPORTED = "unsupported"  # ValueError: the input cannot be done this way

    @property
    def exception(self) -> type[Exception]:
        return {"missing package": ImportError, "needs other hardware": RuntimeError}.get(self.value, ValueError)


@dataclass(frozen=True)
class Problem:
    """One reason a component cannot be loaded as planned.

    Attributes:
        kind: what sort of problem it is (decides the exception type).
        reason: what is wrong, e.g. "package 'gguf' is not installed".
        fix: what to do instead, as a sentence ("use quanto 'int4' ...").
        install: the pip requirement that fixes it, when installing is the fix (e.g. "optimum-quanto>=0.2.7").
        extra: a quantkit extra that installs it as well (e.g. "quantkit[backends]"), offered beside `install`.
        module: the import name that was missing (MISSING_PACKAGE), so a later run can ask whether it is there now.
    """

    kind: ProblemKind
    reason: str
    fix: str = ""
    install: str | None = None
    extra: str | None = None
    module: str | None = None

    @property
    def pip_command(self) -> str | None:
        """The shell command that installs the fix, quoted for the shell; None when installing is not the fix."""
        return pip_command(self.install) if self.install else None

    @property
    def gone(self) -> bool:
        """True when the cause is no longer there: a package that was missing is importable now."""
        return self.kind is ProblemKind.MISSING_PACKAGE and self.module is not None and is_importable(self.module)

    def error(self, subject: str) -> Exception:
        """The exception to raise, with `subject` ("Cannot quantize 'transformer' ...") leading the message."""
        message = f"{subject}: {self.reason}."
        if self.kind is ProblemKind.MISSING_PACKAGE and self.install:
            message += f" {install_hint(self.install, self.extra)}"
            if self.fix:
                message += f" (or instead: {self.fix})"
            message += "."
        elif self.fix:
            message += f" Instead: {self.fix}."
        if self.kind is ProblemKind.MISSING_PACKAGE:
            err = ImportError(message, name=self.module)
        else:
            err = self.kind.exception(message)
        err.problem = self  # the decision travels with the exception (a caller may record its kind)
        return err


def missing_package(module: str, install: str, purpose: str, fix: str = "", extra: str | None = None) -> Problem:
    """The problem of an uninstalled package, e.g. missing_package("gguf", "gguf>=0.10.0", "the 'gguf' backend")."""
    return Problem(ProblemKind.MISSING_PACKAGE, f"package {module!r} is not installed", fix, install, extra, module)


__all__ = ["Problem", "ProblemKind", "missing_package"]
