"""The example prompts a pipeline folder's model card offers: the Hub's `widget` metadata.

A model card (`README.md`) may open with YAML front matter; on the Hugging Face Hub its `widget` list holds the
example inputs a model page shows (`- text: "a red circle"`). `quantkit.compare` draws those when no prompts are
given, so a pipeline is compared on prompts it understands (the embedded pipeline's card lists
`quantkit.comparison.DEFAULT_PROMPTS`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .sources import EMBEDDED_PIPELINE


def card_prompts(source) -> list[str] | None:
    """The texts of the `widget` examples in the front matter of `source`'s README.md, or None when it has none.

    Args:
        source: a local pipeline folder, or None for the embedded pipeline. Anything else (a hub id, a value
            `resolve_source` will refuse) gives None: nothing is downloaded for this.
    """
    if source is None:
        folder = EMBEDDED_PIPELINE
    elif isinstance(source, str | Path) and str(source).strip() and Path(source).is_dir():
        folder = Path(source)
    else:
        return None
    card = folder / "README.md"
    if not card.is_file():
        return None
    import yaml
    from huggingface_hub import metadata_load  # the Hub's own front-matter parser (BOM, CRLF)

    try:
        meta = metadata_load(card)
    except (yaml.YAMLError, ValueError) as err:  # ValueError: a block that is not a mapping
        reason = " ".join(str(err).split())  # on one line: YAML's messages quote the text over several
        warnings.warn(
            f"{card}: its YAML front matter does not parse ({reason}); using the default prompts.", stacklevel=3
        )
        return None
    widget = meta.get("widget") if isinstance(meta, dict) else None
    if not isinstance(widget, list):
        return None
    texts = [w.get("text") for w in widget if isinstance(w, dict)]
    prompts = [t for t in texts if isinstance(t, str) and t.strip()]
    return prompts or None


__all__ = ["card_prompts"]
