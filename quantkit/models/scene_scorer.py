"""A rule-based scorer for the scenes language: does an image show what its prompt asks, attribute by attribute?

`score_scene(image, prompt)` checks background, count, and per object color, shape and size, and for relation
prompts the relation. The rules, in pixels of a 64×64 image (other sizes scale), chosen so that the pipeline's
soft edges and slight color drift do not change a verdict:

1. Background = the median color of the 2-pixel border, named by the nearest color of
   `scenes.BACKGROUND_PALETTE` (light gray when the prompt names none).
2. Objects: a pixel is foreground when its RGB distance to the measured background exceeds 60 (of 441; the
   closest object/background pair, purple on blue, is 117 apart). Objects are the 4-connected foreground
   regions of at least 24 pixels (a small triangle has ~50), largest first. Count = how many there are.
3. Color of an object = the palette color nearest (RGB distance) to the median of its pixels.
4. Coverage of each pixel near an object: its position on the line background → object color (0 … 1), so
   anti-aliased and blurred edges count as partial pixels. Area = summed coverage; width = the widest row's
   coverage, height = the tallest column's.
5. Shape: a triangle (drawn pointing up) is top-light: the skewness of its coverage's vertical profile is
   −2√2/5 ≈ −0.57, a circle's or square's is 0, and blur leaves it far from 0 (it adds variance, not skew), so
   skewness ≤ −0.28 (halfway) = triangle. Otherwise the fill ratio area / (width × height) decides: circle < 0.89
   ≤ square (a circle fills π/4 ≈ 0.785 of its box, a square 1). Fill alone misreads small blurred triangles,
   whose rounded corners raise it past a circle's.
6. Size = max(width, height): small ≤ 14.5 px < medium < 22 px ≤ large (the dataset draws 10–13, 16–20 and
   24–28). Checked only for objects whose prompt names a size.
7. Which object is which: for a relation prompt the two largest objects are matched to the two named objects
   in the order that agrees on more of (color, shape, size); a tie keeps the larger object first. A count
   prompt's objects are all the same thing. A named object with no region left is wrong on every attribute.
8. Relation "A left of B": B's center minus A's center has dx > 0 and |dx| > |dy| (centers of the regions'
   coverage-weighted mass); right of, above (dy > 0 means A is higher), below likewise.

Per image the attributes are: background, count, color, shape, size (None when no size is named), relation
(None for non-relation prompts); an attribute of several objects is right when it is right for every named
object, and the per-object verdicts are columns too (`obj1_color_ok`, …). `score_scenes` scores a batch into a
DataFrame; `scene_adherence` summarizes it per attribute, overall and per prompt form.
"""

from __future__ import annotations

import numpy as np

from quantkit.models import scenes

FOREGROUND_DISTANCE = 60.0
MIN_OBJECT_PIXELS = 24
TRIANGLE_MAX_SKEW = -0.28
CIRCLE_MAX_FILL = 0.89
SMALL_MAX_SIDE = 14.5
LARGE_MIN_SIDE = 22.0
BORDER = 2

ATTRIBUTES = ("background", "count", "color", "shape", "size", "relation")


def _to_array(image) -> np.ndarray:
    """PIL image, uint8 (H, W, 3) array, or float (H, W, 3) array in [0, 1] → float32 (H, W, 3) in [0, 255]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"Expected an RGB image of shape (H, W, 3), got shape {array.shape}.")
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(array, 0.0, 1.0) * 255.0).astype(np.float32)
    return array.astype(np.float32)


def _nearest(color: np.ndarray, palette: dict) -> str:
    return min(palette, key=lambda name: float(np.linalg.norm(color - np.asarray(palette[name], np.float32))))


def _skewness(profile: np.ndarray) -> float:
    """Skewness of a coverage profile (rule 5: the row sums): < 0 when the mass sits low, as in an upward triangle."""
    total = max(float(profile.sum()), 1e-6)
    rows = np.arange(len(profile), dtype=np.float64)
    mean = float((profile * rows).sum()) / total
    variance = float((profile * (rows - mean) ** 2).sum()) / total
    third = float((profile * (rows - mean) ** 3).sum()) / total
    return third / max(variance, 1e-6) ** 1.5


def _measure(pixels: np.ndarray, background: np.ndarray, region: np.ndarray, scale: float) -> dict:
    """Color, shape, size and center of one foreground region (rules 3–6)."""
    from scipy import ndimage

    median = np.median(pixels[region], axis=0)
    color = _nearest(median, scenes.PALETTE)
    direction = median - background
    coverage = ((pixels - background) @ direction) / max(float(direction @ direction), 1e-6)
    near = ndimage.binary_dilation(region)  # the region and its 1-pixel rim: partial edge pixels, no neighbour
    cover = np.clip(coverage, 0.0, 1.0) * near
    area = float(cover.sum())
    row_profile = cover.sum(axis=1)
    width, height = float(row_profile.max()), float(cover.sum(axis=0).max())
    fill = area / max(width * height, 1e-6)
    skew = _skewness(row_profile)
    shape = "triangle" if skew <= TRIANGLE_MAX_SKEW else "circle" if fill < CIRCLE_MAX_FILL else "square"
    side = max(width, height) / scale
    size = "small" if side <= SMALL_MAX_SIDE else "large" if side >= LARGE_MIN_SIDE else ""
    ys, xs = np.indices(cover.shape)
    cx, cy = float((cover * xs).sum() / max(area, 1e-6)), float((cover * ys).sum() / max(area, 1e-6))
    return {
        "color": color,
        "shape": shape,
        "size": size,
        "fill_ratio": round(fill, 3),
        "skewness": round(skew, 3),
        "side": round(side, 1),
        "center": (round(cx / scale, 2), round(cy / scale, 2)),
    }


def analyze_scene(image) -> dict:
    """What the scorer sees: the background word and the objects (largest first) with their measurements.

    Returns:
        dict with background (word), background_rgb, and objects: a list of dicts with color, shape, size,
        fill_ratio, skewness, side (px, 64-px units), center (x, y in 64-px units), pixels.
    """
    from scipy import ndimage

    pixels = _to_array(image)
    scale = pixels.shape[1] / scenes.IMAGE_SIZE
    b = max(1, round(BORDER * scale))
    border = np.concatenate(
        [
            pixels[:b].reshape(-1, 3),
            pixels[-b:].reshape(-1, 3),
            pixels[:, :b].reshape(-1, 3),
            pixels[:, -b:].reshape(-1, 3),
        ]
    )
    background = np.median(border, axis=0)
    foreground = np.linalg.norm(pixels - background, axis=-1) > FOREGROUND_DISTANCE
    labels, n = ndimage.label(foreground)  # 4-connected by default
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = [i + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= MIN_OBJECT_PIXELS * scale**2]
    objects = [
        {**_measure(pixels, background, labels == label, scale), "pixels": int(sizes[label - 1])} for label in order
    ]
    return {
        "background": _nearest(background, scenes.BACKGROUND_PALETTE),
        "background_rgb": tuple(int(v) for v in background),
        "objects": objects,
    }


def _agreement(thing: scenes.Thing, seen: dict) -> int:
    return int(seen["color"] == thing.color) + int(seen["shape"] == thing.shape) + int(seen["size"] == thing.size)


def _relation_holds(relation: str, a: dict, b: dict) -> bool:
    dx, dy = b["center"][0] - a["center"][0], b["center"][1] - a["center"][1]
    if relation in ("left of", "right of"):
        return abs(dx) > abs(dy) and (dx > 0 if relation == "left of" else dx < 0)
    return abs(dy) > abs(dx) and (dy > 0 if relation == "above" else dy < 0)


def match_objects(scene: scenes.Scene, found: list[dict]) -> list[dict | None]:
    """Rule 7: the seen object (an `analyze_scene` object) for each of the scene's named objects, in the scene's
    order; None where no region is left for it."""
    wanted = list(scene.objects)
    if scene.form == "relation" and len(found) >= 2:
        first, second = found[0], found[1]
        straight = _agreement(wanted[0], first) + _agreement(wanted[1], second)
        swapped = _agreement(wanted[0], second) + _agreement(wanted[1], first)
        return [first, second] if straight >= swapped else [second, first]
    if scene.form == "relation" and len(found) == 1:
        best = 0 if _agreement(wanted[0], found[0]) >= _agreement(wanted[1], found[0]) else 1
        return [found[0] if i == best else None for i in range(2)]
    return [found[i] if i < len(found) else None for i in range(len(wanted))]


def score_scene(image, prompt: str) -> dict:
    """Check `image` against `prompt` (rules in the module docstring).

    Args:
        image: PIL image, uint8 (H, W, 3) array, or float (H, W, 3) array in [0, 1] (a pipeline's "np" output).
        prompt: a prompt of the scenes grammar (`scenes.parse_prompt`).

    Returns:
        dict with background_ok, count_ok, color_ok, shape_ok (bools), size_ok, relation_ok (bool or None when
        not asked), obj1_* / obj2_* per-object verdicts and the matched object's fill ratio (`obj1_fill_ratio`,
        None without a match; what rule 5 read), n_objects (found), and seen (`analyze_scene`).
    """
    scene = scenes.parse_prompt(prompt)
    seen = analyze_scene(image)
    found = seen["objects"]
    wanted = list(scene.objects)
    matched = match_objects(scene, found)

    result: dict = {"background_ok": seen["background"] == scene.background, "count_ok": len(found) == len(wanted)}
    per_attribute: dict[str, list[bool]] = {"color": [], "shape": [], "size": []}
    for k, (thing, obj) in enumerate(zip(wanted, matched, strict=True), start=1):
        for attribute in ("color", "shape", "size"):
            asked = attribute != "size" or thing.size != ""
            ok = obj is not None and obj[attribute] == getattr(thing, attribute)
            result[f"obj{k}_{attribute}_ok"] = ok if asked else None
            if asked:
                per_attribute[attribute].append(ok)
        result[f"obj{k}_fill_ratio"] = obj["fill_ratio"] if obj is not None else None
    for attribute, verdicts in per_attribute.items():
        result[f"{attribute}_ok"] = all(verdicts) if verdicts else None
    if scene.form == "relation":
        a, b = matched
        result["relation_ok"] = a is not None and b is not None and _relation_holds(scene.relation, a, b)
    else:
        result["relation_ok"] = None
    result["n_objects"] = len(found)
    result["seen"] = seen
    return result


def score_scenes(images, prompts: list[str]):
    """Score a batch; one row per image.

    Returns:
        pandas.DataFrame with prompt, form, the `*_ok` columns of `score_scene` (per attribute and per object),
        all_ok (every asked attribute right), n_objects, and the background and objects the scorer saw.
    """
    import pandas as pd

    if len(images) != len(prompts):
        raise ValueError(f"Got {len(images)} images but {len(prompts)} prompts; pass one prompt per image.")
    rows = []
    for image, prompt in zip(images, prompts, strict=True):
        result = score_scene(image, prompt)
        seen = result.pop("seen")
        asked = [result[f"{a}_ok"] for a in ATTRIBUTES if result[f"{a}_ok"] is not None]
        rows.append(
            {
                "prompt": prompt,
                "form": scenes.parse_prompt(prompt).form,
                **result,
                "all_ok": all(asked),
                "seen_background": seen["background"],
                "seen_objects": "; ".join(
                    f"{o['size'] or 'medium'} {o['color']} {o['shape']}" for o in seen["objects"]
                ),
            }
        )
    return pd.DataFrame(rows)


def scene_adherence(table) -> dict:
    """Rates (0–1) per attribute from `score_scenes`' table, each over the images that ask for it.

    Returns:
        dict with n, all, and per attribute its rate and `n_<attribute>`; plus `by_form`: the same per form.
    """

    def summarize(df) -> dict:
        out = {"n": int(len(df)), "all": float(df["all_ok"].astype(bool).mean()) if len(df) else float("nan")}
        for attribute in ATTRIBUTES:
            values = df[f"{attribute}_ok"].dropna()
            out[attribute] = float(values.astype(bool).mean()) if len(values) else float("nan")
            out[f"n_{attribute}"] = int(len(values))
        return out

    summary = summarize(table)
    summary["by_form"] = {form: summarize(part) for form, part in table.groupby("form", sort=True)}
    return summary


def is_scene_prompt(prompt: str) -> bool:
    """Whether `prompt` is in the scenes grammar."""
    try:
        scenes.parse_prompt(prompt)
    except ValueError:
        return False
    return True
