"""The "colored shapes" world: a procedural dataset of filled shapes and a rule-based adherence scorer.

(Work in progress: constants first, so the tokenizers in `tiny.py` can be built over its words.)
"""

COLORS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("", "on the left", "on the right", "at the top", "at the bottom")
SIZES = ("", "small", "large")


def vocabulary() -> list[str]:
    """Every word a training prompt can contain, in a fixed order (the tokenizers are built over it)."""
    words = ["a"]
    for phrase in SIZES + COLORS + SHAPES + POSITIONS:
        for word in phrase.split():
            if word not in words:
                words.append(word)
    return words
