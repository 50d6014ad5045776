"""The "colored shapes" world: a procedural dataset of filled shapes, and a rule-based adherence scorer.

Dataset. A 32×32 image holds one filled shape (circle, square or triangle) in one of five colors on a plain
light-gray background, with jittered size and position. Its prompt names what is drawn:

    "a red circle"                      (medium size, near the middle)
    "a small blue triangle on the left"
    "a large purple square at the top"

Every word a prompt can contain is in `vocabulary()`; the tiny pipelines' tokenizers are built over it.

Scorer. `score_image(image, prompt)` checks a generated image against its prompt with a few rules a learner
can verify by hand (thresholds in pixels of a 32×32 image; other sizes are scaled):

1. Background = the median color of the 1-pixel border. A pixel is *foreground* when its RGB distance to the
   background exceeds 60 (of 441); the shape is the largest 4-connected foreground blob (< 6 pixels: no shape).
2. Color = the palette color nearest (RGB distance) to the blob's median color.
3. Coverage: each pixel's position on the line background → shape color (0 = background, 1 = shape color).
   The shape's pixels are those with coverage > 0.5; anti-aliased edge pixels count as partial pixels.
4. Shape = the fill ratio, area / (width × height), with area = summed coverage, width = the widest row's
   coverage, height = the tallest column's: a triangle fills 1/2 of its box, a circle π/4 ≈ 0.785, a square 1.
   Ratio < 0.70 → triangle, < 0.89 → circle, else square. (0.70, not the midpoint 0.64: a small triangle's
   widest row is its partly covered bottom row, so 7-px triangles measure up to 0.68; circles measure 0.77–0.79.)
5. Position = the center of the shape's bounding box relative to the image center (dx, dy): "on the left" needs
   dx ≤ −2.5 px and |dx| > |dy|; right, top and bottom likewise. Only checked when the prompt names a position.
6. Size = max(width, height): small ≤ 11.25 px, large ≥ 16.5 px (the dataset draws 7–10, 12.5–15 and 18–21).
   Only checked when the prompt names a size.
"""

from __future__ import annotations

import re
from collections import deque

import numpy as np
from PIL import Image, ImageDraw

COLORS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("", "on the left", "on the right", "at the top", "at the bottom")  # "" = near the middle
SIZES = ("", "small", "large")  # "" = medium

# RGB of each color and of the background: far apart from each other so the scorer's rule 2 is unambiguous.
PALETTE = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 190, 20),
    "purple": (150, 50, 190),  # bluish purples get mistaken for blue; this one is 117 from blue, 164 from red
}
BACKGROUND = (240, 240, 240)

IMAGE_SIZE = 32  # pixels; every length below is for this size and scales with `image_size`
SIZE_RANGES = {"small": (7.0, 10.0), "": (12.5, 15.0), "large": (18.0, 21.0)}  # side of the shape, px
CENTER_JITTER = 2.5  # the center of a shape with no position word is within ±2.5 px of the image center
SIDE_OFFSET = (5.5, 8.0)  # a shape "on the left" is centered 5.5–8 px left of center (less if it would not fit)
MARGIN = 1.0  # px kept free between a shape and the image border

# Scorer thresholds (see the module docstring).
FOREGROUND_DISTANCE = 60.0
MIN_BLOB_PIXELS = 6
TRIANGLE_MAX_FILL = 0.70
CIRCLE_MAX_FILL = 0.89
POSITION_MIN_OFFSET = 2.5
SMALL_MAX_SIDE = 11.25
LARGE_MIN_SIDE = 16.5

HELDOUT_SEED_OFFSET = 1_000_000  # generation seeds at or above this are never used by training

_SUPERSAMPLE = 4  # shapes are drawn 4× larger and box-downsampled: smooth, anti-aliased edges


def vocabulary() -> list[str]:
    """Every word a training prompt can contain, in a fixed order (the tokenizers are built over it)."""
    words = ["a"]
    for phrase in SIZES + COLORS + SHAPES + POSITIONS:
        for word in phrase.split():
            if word not in words:
                words.append(word)
    return words


def make_prompt(color: str, shape: str, position: str = "", size: str = "") -> str:
    """The prompt "a {size} {color} {shape} {position}" without empty parts: ("red", "circle") → "a red circle"."""
    _check(color, shape, position, size)
    return " ".join(part for part in ("a", size, color, shape, position) if part)


_PROMPT_RE = re.compile(
    r"^a (?:(?P<size>{sizes}) )?(?P<color>{colors}) (?P<shape>{shapes})(?: (?P<position>{positions}))?$".format(
        sizes="|".join(s for s in SIZES if s),
        colors="|".join(COLORS),
        shapes="|".join(SHAPES),
        positions="|".join(p for p in POSITIONS if p),
    )
)


def parse_prompt(prompt: str) -> dict:
    """The inverse of `make_prompt`: {"color", "shape", "position", "size"} ("" for a missing part).

    Raises:
        ValueError: the prompt is not of the form `make_prompt` writes.
    """
    match = _PROMPT_RE.match(prompt.strip().lower())
    if match is None:
        raise ValueError(
            f"Cannot score {prompt!r}: prompts must read 'a [small|large] <color> <shape> [<position>]' with "
            f"color in {COLORS}, shape in {SHAPES}, position in {POSITIONS[1:]}, "
            "e.g. 'a small red circle on the left'."
        )
    return {key: value or "" for key, value in match.groupdict().items()}


def _check(color: str, shape: str, position: str, size: str) -> None:
    for value, allowed, what in (
        (color, COLORS, "color"),
        (shape, SHAPES, "shape"),
        (position, POSITIONS, "position"),
        (size, SIZES, "size"),
    ):
        if value not in allowed:
            raise ValueError(f"Unknown {what} {value!r}; choose one of {allowed}.")


def _rng(rng: np.random.Generator | None, seed: int | None) -> np.random.Generator:
    if rng is not None and seed is not None:
        raise ValueError("Pass either rng or seed, not both.")
    return rng if rng is not None else np.random.default_rng(seed)


def render_shape(
    color: str,
    shape: str,
    position: str = "",
    size: str = "",
    *,
    rng: np.random.Generator | None = None,
    seed: int | None = None,
    image_size: int = IMAGE_SIZE,
) -> Image.Image:
    """Draw one filled shape as the dataset does (size and position jittered by `rng` or `seed`).

    Returns:
        An RGB `PIL.Image` of `image_size`×`image_size` pixels.
    """
    _check(color, shape, position, size)
    rng = _rng(rng, seed)
    scale = image_size / IMAGE_SIZE
    low, high = SIZE_RANGES[size]
    side = rng.uniform(low, high) * scale
    half = side / 2
    middle = image_size / 2
    lo, hi = half + MARGIN * scale, image_size - half - MARGIN * scale  # where the center may go and still fit
    across = middle + rng.uniform(-CENTER_JITTER, CENTER_JITTER) * scale
    offset = rng.uniform(*SIDE_OFFSET) * scale
    if position == "":
        cx, cy = across, middle + rng.uniform(-CENTER_JITTER, CENTER_JITTER) * scale
    elif position == "on the left":
        cx, cy = middle - offset, across
    elif position == "on the right":
        cx, cy = middle + offset, across
    elif position == "at the top":
        cx, cy = across, middle - offset
    else:  # "at the bottom"
        cx, cy = across, middle + offset
    cx, cy = float(np.clip(cx, lo, hi)), float(np.clip(cy, lo, hi))

    big = image_size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    s = _SUPERSAMPLE
    x0, y0, x1, y1 = (cx - half) * s, (cy - half) * s, (cx + half) * s, (cy + half) * s
    fill = PALETTE[color]
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:  # triangle pointing up; fills half of its bounding box
        draw.polygon([(cx * s, y0), (x1, y1), (x0, y1)], fill=fill)
    return image.resize((image_size, image_size), Image.Resampling.BOX)


def all_prompts() -> list[str]:
    """Every prompt of the dataset (5 colors × 3 shapes × 5 positions × 3 sizes = 225), in a fixed order."""
    return [make_prompt(c, sh, p, sz) for c in COLORS for sh in SHAPES for p in POSITIONS for sz in SIZES]


def sample_dataset(n: int, seed: int = 0, image_size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[str]]:
    """`n` random (image, prompt) pairs; color, shape, position and size are drawn uniformly.

    Returns:
        images: uint8 array of shape (n, image_size, image_size, 3); prompts: list of n strings.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    prompts = []
    for i in range(n):
        color, shape = COLORS[rng.integers(len(COLORS))], SHAPES[rng.integers(len(SHAPES))]
        position, size = POSITIONS[rng.integers(len(POSITIONS))], SIZES[rng.integers(len(SIZES))]
        images[i] = np.asarray(render_shape(color, shape, position, size, rng=rng, image_size=image_size))
        prompts.append(make_prompt(color, shape, position, size))
    return images, prompts


def heldout_prompts(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """`n` (prompt, generation seed) pairs for evaluation, never seen in training.

    Prompts cycle through a shuffled copy of `all_prompts()` (so n ≤ 225 gives n distinct prompts, balanced
    over colors and shapes as far as n allows); generation seeds start at `HELDOUT_SEED_OFFSET`, a range that
    training never uses for its noise. Every prompt *text* does occur in training — what is new is the pair.
    """
    rng = np.random.default_rng(seed)
    prompts = all_prompts()
    order: list[str] = []
    while len(order) < n:
        order.extend(prompts[i] for i in rng.permutation(len(prompts)))
    return [(prompt, HELDOUT_SEED_OFFSET + 1000 * seed + i) for i, prompt in enumerate(order[:n])]


# ---------------------------------------------------------------------------------------------------------------
# Scorer
# ---------------------------------------------------------------------------------------------------------------


def _to_array(image) -> np.ndarray:
    """PIL image, uint8 (H, W, 3) array, or float (H, W, 3) array in [0, 1] → float32 (H, W, 3) in [0, 255]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"Expected an RGB image of shape (H, W, 3), got shape {array.shape}.")
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(array, 0.0, 1.0) * 255.0).astype(np.float32)
    return array.astype(np.float32)


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (plain breadth-first search; 32×32 is small)."""
    height, width = mask.shape
    labels = np.zeros(mask.shape, dtype=np.int32)
    best_label, best_size, label = 0, 0, 0
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        label += 1
        labels[start] = label
        queue, count = deque([start]), 0
        while queue:
            y, x = queue.popleft()
            count += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    queue.append((ny, nx))
        if count > best_size:
            best_label, best_size = label, count
    return labels == best_label if best_size else np.zeros_like(mask)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """The mask grown by one pixel in the 4 directions."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def _nearest(color: np.ndarray, palette: dict) -> str:
    return min(palette, key=lambda name: float(np.linalg.norm(color - np.asarray(palette[name], np.float32))))


def analyze_image(image) -> dict:
    """What the scorer sees in an image: color, shape, position and size, plus the numbers behind them.

    Returns:
        dict with color, shape, position, size (predicted words; None when no shape is found), fill_ratio,
        area (pixels), bbox (x0, y0, x1, y1, inclusive), dx, dy (bbox center minus image center, pixels).
    """
    pixels = _to_array(image)
    height, width, _ = pixels.shape
    scale = width / IMAGE_SIZE
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    distance = np.linalg.norm(pixels - background, axis=-1)
    blob = _largest_blob(distance > FOREGROUND_DISTANCE)
    empty = {
        "color": None,
        "shape": None,
        "position": None,
        "size": None,
        "fill_ratio": 0.0,
        "area": 0,
        "bbox": None,
        "dx": 0.0,
        "dy": 0.0,
    }
    if blob.sum() < MIN_BLOB_PIXELS * scale**2:
        return empty
    median = np.median(pixels[blob], axis=0)
    color = _nearest(median, PALETTE)

    # Half coverage: closer to the shape's color than to the background, along the background→color line.
    direction = median - background
    coverage = ((pixels - background) @ direction) / max(float(direction @ direction), 1e-6)
    shape_mask = _largest_blob((coverage > 0.5) & (distance > FOREGROUND_DISTANCE / 2))
    if shape_mask.sum() < MIN_BLOB_PIXELS * scale**2:
        return {**empty, "color": color}
    # Sub-pixel measurements from the coverage (0–1 per pixel) around the blob: area = its sum, width = the widest
    # row, height = the tallest column. Anti-aliased edges then count as partial pixels, so even a 7-px circle
    # measures close to π/4.
    near = _dilate(shape_mask)
    cover = np.clip(coverage, 0.0, 1.0) * near
    area = float(cover.sum())
    box_w, box_h = float(cover.sum(axis=1).max()), float(cover.sum(axis=0).max())
    fill = area / max(box_w * box_h, 1e-6)
    shape = "triangle" if fill < TRIANGLE_MAX_FILL else "circle" if fill < CIRCLE_MAX_FILL else "square"

    ys, xs = np.nonzero(shape_mask)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    dx = ((x0 + x1 + 1) / 2 - width / 2) / scale  # in 32-px units
    dy = ((y0 + y1 + 1) / 2 - height / 2) / scale
    if max(abs(dx), abs(dy)) < POSITION_MIN_OFFSET:
        position = ""
    elif abs(dx) > abs(dy):
        position = "on the left" if dx < 0 else "on the right"
    else:
        position = "at the top" if dy < 0 else "at the bottom"
    side = max(box_w, box_h) / scale
    size = "small" if side <= SMALL_MAX_SIDE else "large" if side >= LARGE_MIN_SIDE else ""
    return {
        "color": color,
        "shape": shape,
        "position": position,
        "size": size,
        "fill_ratio": round(fill, 3),
        "area": round(area, 1),
        "bbox": (x0, y0, x1, y1),
        "dx": round(dx, 2),
        "dy": round(dy, 2),
    }


def score_image(image, prompt: str) -> dict:
    """Does `image` show what `prompt` asks for? (rules in the module docstring)

    Args:
        image: PIL image, uint8 (H, W, 3) array, or float (H, W, 3) array in [0, 1] (a pipeline's "np" output).
        prompt: a prompt of the dataset's form, e.g. "a small red circle on the left".

    Returns:
        dict with color_ok, shape_ok (bools), position_ok, size_ok (bools, or None when the prompt does not
        name a position / size), and predicted: the dict of `analyze_image`.
    """
    wanted = parse_prompt(prompt)
    seen = analyze_image(image)
    return {
        "color_ok": seen["color"] == wanted["color"],
        "shape_ok": seen["shape"] == wanted["shape"],
        "position_ok": (seen["position"] == wanted["position"]) if wanted["position"] else None,
        "size_ok": (seen["size"] == wanted["size"]) if wanted["size"] else None,
        "predicted": seen,
    }


def score_images(images, prompts: list[str]):
    """Score a batch; one row per image.

    Returns:
        pandas.DataFrame with columns prompt, color, shape, position, size (asked), color_ok, shape_ok,
        position_ok, size_ok, all_ok (every asked attribute right), predicted_color, predicted_shape,
        predicted_position, predicted_size, fill_ratio.
    """
    import pandas as pd

    if len(images) != len(prompts):
        raise ValueError(f"Got {len(images)} images but {len(prompts)} prompts; pass one prompt per image.")
    rows = []
    for image, prompt in zip(images, prompts, strict=True):
        result = score_image(image, prompt)
        seen = result.pop("predicted")
        checks = [result[k] for k in ("color_ok", "shape_ok", "position_ok", "size_ok") if result[k] is not None]
        rows.append(
            {
                "prompt": prompt,
                **parse_prompt(prompt),
                **result,
                "all_ok": all(checks),
                **{f"predicted_{k}": seen[k] for k in ("color", "shape", "position", "size")},
                "fill_ratio": seen["fill_ratio"],
            }
        )
    return pd.DataFrame(rows)


def adherence_summary(df) -> dict:
    """Rates (0–1) from `score_images`' table; position and size only over the prompts that name them.

    Returns:
        dict with n, color, shape, position, n_position, size, n_size, all.
    """

    def rate(column: str) -> tuple[float, int]:
        values = df[column].dropna()
        return (float(values.astype(bool).mean()) if len(values) else float("nan")), int(len(values))

    position, n_position = rate("position_ok")
    size, n_size = rate("size_ok")
    return {
        "n": int(len(df)),
        "color": rate("color_ok")[0],
        "shape": rate("shape_ok")[0],
        "position": position,
        "n_position": n_position,
        "size": size,
        "n_size": n_size,
        "all": rate("all_ok")[0],
    }
