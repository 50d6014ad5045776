"""The "scenes" world of the embedded pipeline v2: a prompt grammar and a procedural renderer at 64×64 pixels.

A scene holds one or two filled shapes (circle, square, triangle) in one of five colors, three sizes, on a plain
background. Its prompt says what is drawn, in one of three forms (an optional background clause can follow
each):

    single    "a red circle", "a small blue square", "a large purple triangle"
    relation  "a red circle left of a blue square"   (also "right of", "above", "below")
    count     "two green triangles", "two small red squares"
    + background   "... on a yellow background"      (without it the background is light gray)

Sizes: "small", none (medium) or "large". In a relation prompt each object has its own color, shape and size,
and the two objects differ in color or shape (so the scorer can tell which is which). An object never has the
background's color.

Layout rules (pixels of a 64×64 image; other sizes scale):

- single object: centered within ±8 px of the image center;
- relation "A left of B": A's center is left of B's, both on one horizontal line (each ±3 px, the pair ±8 px),
  with at least 4 px between their boxes; "above"/"below" likewise on a vertical line;
- count "two X": two copies side by side or one above the other (chosen at random), 4 px apart or more.

Every word a prompt can contain is in `vocabulary()`; the pipeline's tokenizers are built over it. The scorer
that checks a generated image against its prompt is `quantkit.models.scene_scorer`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle")
SIZES = ("", "small", "large")  # "" = medium
RELATIONS = ("left of", "right of", "above", "below")
BACKGROUNDS = ("", "yellow", "blue", "green", "black")  # "" = the default light gray
COUNT_WORDS = {1: "a", 2: "two"}

# Object colors, far apart in RGB so the nearest-color rule is unambiguous even with some drift.
PALETTE = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 190, 20),
    "purple": (150, 50, 190),
}
DEFAULT_BACKGROUND = (240, 240, 240)  # light gray: the background when the prompt names none
BACKGROUND_PALETTE = {"": DEFAULT_BACKGROUND, "black": (25, 25, 25), **{c: PALETTE[c] for c in BACKGROUNDS[1:4]}}

IMAGE_SIZE = 64  # pixels; every length below is for this size and scales with `image_size`
SIZE_RANGES = {"small": (10.0, 13.0), "": (16.0, 20.0), "large": (24.0, 28.0)}  # side of the box, px
SINGLE_JITTER = 8.0  # a single object's center lies within ±8 px of the image center
LINE_JITTER = 8.0  # a pair's shared line (y for left/right, x for above/below) within ±8 px of the center
OBJECT_JITTER = 3.0  # each object of a pair sits within ±3 px of that line
MIN_GAP = 4.0  # px between the boxes of two objects
MARGIN = 2.0  # px between an object and the image border

HELDOUT_SEED_OFFSET = 1_000_000  # generation seeds at or above this are never used by training

# How often each prompt form is drawn in the dataset (relations are the hardest to learn: the most data).
FORM_WEIGHTS = {"single": 0.35, "relation": 0.45, "count": 0.20}
DEFAULT_BACKGROUND_WEIGHT = 0.4  # the rest is spread evenly over the named backgrounds
SIZE_WEIGHTS = (0.5, 0.25, 0.25)  # medium, small, large

_SUPERSAMPLE = 4  # shapes are drawn 4× larger and box-downsampled: smooth, anti-aliased edges


@dataclass(frozen=True)
class Thing:
    """One object of a scene: a color, a shape and a size word ("" = medium)."""

    color: str
    shape: str
    size: str = ""

    def phrase(self, plural: bool = False) -> str:
        """ "small blue square" (or "small blue squares"), without the article."""
        return " ".join(part for part in (self.size, self.color, self.shape + ("s" if plural else "")) if part)


@dataclass(frozen=True)
class Scene:
    """What a prompt asks for. `form` is "single", "relation" or "count"; `things` has 1 or 2 entries
    (a count scene has one Thing and `count` = 2); `relation` is set for relation scenes only."""

    form: str
    things: tuple[Thing, ...]
    relation: str = ""
    background: str = ""
    count: int = 1

    @property
    def n_objects(self) -> int:
        """How many shapes the image should hold."""
        return 2 if self.form == "relation" else self.count

    @property
    def objects(self) -> tuple[Thing, ...]:
        """One Thing per shape in the image (a count scene repeats its Thing)."""
        return self.things if self.form == "relation" else self.things * self.count

    def prompt(self) -> str:
        """The prompt text, e.g. "a red circle left of a blue square on a yellow background"."""
        if self.form == "single":
            text = f"a {self.things[0].phrase()}"
        elif self.form == "relation":
            text = f"a {self.things[0].phrase()} {self.relation} a {self.things[1].phrase()}"
        else:
            text = f"{COUNT_WORDS[self.count]} {self.things[0].phrase(plural=True)}"
        return text + (f" on a {self.background} background" if self.background else "")


def vocabulary() -> list[str]:
    """Every word a prompt can contain, in a fixed order (the tokenizers are built over it)."""
    phrases = ["a two on background of"] + list(SIZES + COLORS + BACKGROUNDS + RELATIONS)
    phrases += list(SHAPES) + [s + "s" for s in SHAPES]
    words: list[str] = []
    for phrase in phrases:
        for word in phrase.split():
            if word not in words:
                words.append(word)
    return words


def _check_scene(scene: Scene) -> None:
    if scene.form not in FORM_WEIGHTS:
        raise ValueError(f"Unknown form {scene.form!r}; choose one of {tuple(FORM_WEIGHTS)}.")
    for thing in scene.things:
        for value, allowed, what in (
            (thing.color, COLORS, "color"),
            (thing.shape, SHAPES, "shape"),
            (thing.size, SIZES, "size"),
        ):
            if value not in allowed:
                raise ValueError(f"Unknown {what} {value!r}; choose one of {allowed}.")
        if scene.background and thing.color == scene.background:
            raise ValueError(f"A {thing.color} object on a {scene.background} background would be invisible.")
    if scene.background not in BACKGROUNDS:
        raise ValueError(f"Unknown background {scene.background!r}; choose one of {BACKGROUNDS}.")
    if scene.form == "relation":
        if scene.relation not in RELATIONS or len(scene.things) != 2:
            raise ValueError(f"A relation scene needs two things and a relation in {RELATIONS}.")
        a, b = scene.things
        if (a.color, a.shape) == (b.color, b.shape):
            raise ValueError("The two objects of a relation must differ in color or shape.")


_THING = r"(?:(small|large) )?({colors}) ({shapes})".format(colors="|".join(COLORS), shapes="|".join(SHAPES))
_BACKGROUND = r"(?: on a ({backgrounds}) background)?$".format(backgrounds="|".join(b for b in BACKGROUNDS if b))
_SINGLE_RE = re.compile(r"^a " + _THING + _BACKGROUND)
_RELATION_RE = re.compile(r"^a " + _THING + " (" + "|".join(RELATIONS) + ") a " + _THING + _BACKGROUND)
_COUNT_RE = re.compile(r"^two " + _THING + "s" + _BACKGROUND)


def parse_prompt(prompt: str) -> Scene:
    """The Scene a prompt asks for (the inverse of `Scene.prompt`).

    Raises:
        ValueError: the prompt is not in the grammar (the message shows the three forms).
    """
    text = " ".join(prompt.strip().lower().split())
    if match := _SINGLE_RE.match(text):
        size, color, shape, background = match.groups()
        scene = Scene("single", (Thing(color, shape, size or ""),), background=background or "")
    elif match := _RELATION_RE.match(text):
        s1, c1, h1, relation, s2, c2, h2, background = match.groups()
        things = (Thing(c1, h1, s1 or ""), Thing(c2, h2, s2 or ""))
        scene = Scene("relation", things, relation=relation, background=background or "")
    elif match := _COUNT_RE.match(text):
        size, color, shape, background = match.groups()
        scene = Scene("count", (Thing(color, shape, size or ""),), background=background or "", count=2)
    else:
        raise ValueError(
            f"Cannot parse {prompt!r}: prompts read 'a [small|large] <color> <shape>', 'a <object> "
            f"<left of|right of|above|below> a <object>' or 'two [small|large] <color> <shape>s', each optionally "
            f"followed by 'on a <background> background'; colors {COLORS}, shapes {SHAPES}, "
            f"backgrounds {BACKGROUNDS[1:]}."
        )
    _check_scene(scene)
    return scene


# ---------------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------------


def _choice(rng: np.random.Generator, options, weights=None):
    if weights is None:
        return options[int(rng.integers(len(options)))]
    return options[int(rng.choice(len(options), p=np.asarray(weights) / np.sum(weights)))]


def _sample_thing(rng: np.random.Generator, background: str) -> Thing:
    colors = [c for c in COLORS if c != background]
    return Thing(_choice(rng, colors), _choice(rng, SHAPES), _choice(rng, SIZES, SIZE_WEIGHTS))


def sample_scene(rng: np.random.Generator, form: str | None = None) -> Scene:
    """A random scene: form by `FORM_WEIGHTS` (unless given), background, then its objects."""
    form = form or _choice(rng, list(FORM_WEIGHTS), list(FORM_WEIGHTS.values()))
    named = (1 - DEFAULT_BACKGROUND_WEIGHT) / (len(BACKGROUNDS) - 1)
    background = _choice(rng, BACKGROUNDS, [DEFAULT_BACKGROUND_WEIGHT] + [named] * (len(BACKGROUNDS) - 1))
    if form == "single":
        return Scene("single", (_sample_thing(rng, background),), background=background)
    if form == "count":
        return Scene("count", (_sample_thing(rng, background),), background=background, count=2)
    first = _sample_thing(rng, background)
    while (second := _sample_thing(rng, background)).color == first.color and second.shape == first.shape:
        pass
    return Scene("relation", (first, second), relation=_choice(rng, RELATIONS), background=background)


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------


def _layout(scene: Scene, sides: list[float], rng: np.random.Generator) -> list[tuple[float, float]]:
    """Object centers (x, y) in 64-px units, following the layout rules of the module docstring."""
    middle = IMAGE_SIZE / 2
    if scene.n_objects == 1:
        half = sides[0] / 2
        lo, hi = half + MARGIN, IMAGE_SIZE - half - MARGIN
        return [tuple(float(np.clip(middle + rng.uniform(-SINGLE_JITTER, SINGLE_JITTER), lo, hi)) for _ in "xy")]
    if scene.form == "relation":
        horizontal = scene.relation in ("left of", "right of")
        first_before = scene.relation in ("left of", "above")  # the first object has the smaller coordinate
    else:  # count: side by side or stacked, at random
        horizontal, first_before = bool(rng.integers(2)), True
    # along the axis: the two centers straddle the middle, spread so the boxes keep MIN_GAP and MARGIN
    need = (sides[0] + sides[1]) / 2 + MIN_GAP  # smallest distance between the centers
    room = IMAGE_SIZE - 2 * MARGIN - (sides[0] + sides[1]) / 2  # largest distance that still fits
    distance = rng.uniform(need, max(need, room))
    low_side, high_side = (sides[0], sides[1]) if first_before else (sides[1], sides[0])
    start_lo = MARGIN + low_side / 2
    start_hi = IMAGE_SIZE - MARGIN - high_side / 2 - distance
    start = float(np.clip(middle - distance / 2 + rng.uniform(-2.0, 2.0), start_lo, max(start_lo, start_hi)))
    along = [start, start + distance] if first_before else [start + distance, start]
    line = middle + rng.uniform(-LINE_JITTER, LINE_JITTER)
    across = []
    for side in sides:
        lo, hi = side / 2 + MARGIN, IMAGE_SIZE - side / 2 - MARGIN
        across.append(float(np.clip(line + rng.uniform(-OBJECT_JITTER, OBJECT_JITTER), lo, hi)))
    return [(a, c) if horizontal else (c, a) for a, c in zip(along, across, strict=True)]


def render_scene(
    scene: Scene | str,
    *,
    rng: np.random.Generator | None = None,
    seed: int | None = None,
    image_size: int = IMAGE_SIZE,
) -> Image.Image:
    """Draw a scene (or a prompt) as the dataset does; sizes and positions are jittered by `rng` or `seed`.

    Returns:
        An RGB `PIL.Image` of `image_size`×`image_size` pixels.
    """
    if isinstance(scene, str):
        scene = parse_prompt(scene)
    _check_scene(scene)
    if rng is not None and seed is not None:
        raise ValueError("Pass either rng or seed, not both.")
    rng = rng if rng is not None else np.random.default_rng(seed)
    objects = scene.objects
    sides = [rng.uniform(*SIZE_RANGES[thing.size]) for thing in objects]
    if scene.form == "count":
        sides = [sides[0]] * len(objects)  # "two small squares": one size for both
    centers = _layout(scene, sides, rng)

    s = _SUPERSAMPLE * image_size / IMAGE_SIZE  # drawing pixels per 64-px unit
    image = Image.new("RGB", (image_size * _SUPERSAMPLE,) * 2, BACKGROUND_PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    for thing, side, (cx, cy) in zip(objects, sides, centers, strict=True):
        half = side / 2
        x0, y0, x1, y1 = (cx - half) * s, (cy - half) * s, (cx + half) * s, (cy + half) * s
        fill = PALETTE[thing.color]
        if thing.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif thing.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:  # triangle pointing up; fills half of its bounding box
            draw.polygon([(cx * s, y0), (x1, y1), (x0, y1)], fill=fill)
    return image.resize((image_size, image_size), Image.Resampling.BOX)


def sample_dataset(n: int, seed: int = 0, image_size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[str]]:
    """`n` random (image, prompt) pairs drawn by `sample_scene` and `render_scene`.

    Returns:
        images: uint8 array of shape (n, image_size, image_size, 3); prompts: list of n strings.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    prompts = []
    for i in range(n):
        scene = sample_scene(rng)
        images[i] = np.asarray(render_scene(scene, rng=rng, image_size=image_size))
        prompts.append(scene.prompt())
    return images, prompts


def heldout_prompts(n: int, seed: int = 0, form: str | None = None) -> list[tuple[str, int]]:
    """`n` (prompt, generation seed) pairs for evaluation.

    Prompts are drawn by `sample_scene` from an RNG stream that training never uses (seed + 10,000); with
    `form` ("single", "relation", "count") all of that form, else the dataset's mix. Generation seeds start at
    `HELDOUT_SEED_OFFSET` + 1000·seed, a range training never uses for its noise. Single and count prompts
    are few enough that their texts occur in training; most relation prompts are new combinations.
    """
    rng = np.random.default_rng(10_000 + seed)
    offset = {None: 0, "single": 100, "relation": 200, "count": 300}[form]
    return [(sample_scene(rng, form).prompt(), HELDOUT_SEED_OFFSET + 1000 * seed + offset + i) for i in range(n)]


# Five prompts that show the language at a glance: the model card's widget examples and quantkit's default
# comparison prompts (quantkit.comparison.DEFAULT_PROMPTS), one of each kind — a single object, a size, a
# relation, a count, a background.
DEMO_PROMPTS = (
    "a red circle",
    "a small blue square",
    "a red circle left of a blue square",
    "two green triangles",
    "a red circle above a blue square on a yellow background",
)


def example_prompts() -> list[str]:
    """The prompt forms named in the issue, verbatim (the grammar must parse every one)."""
    base = [
        "a red circle",
        "a small blue square",
        "a red circle left of a blue square",
        "a red circle right of a blue square",
        "a red circle above a blue square",
        "a red circle below a blue square",
        "two green triangles",
    ]
    return base + [p + " on a yellow background" for p in base if "yellow" not in p]
