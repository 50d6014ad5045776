"""The quality-vs-bytes plot: every number sits beside its own point, no two overlap, the reference is not a number.

Measured with the renderer (`get_window_extent`), on a crowded comparison like the one `quantkit compare` makes
of the embedded pipeline (five 8-bit variants within 0.2 MiB and 3 dB of each other).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from quantkit.show.plots import plot_quality_vs_bytes
from quantkit.units import MiB

# (variant, bytes, PSNR dB): the embedded pipeline's comparison on a 2-core CPU (the baseline is the reference)
CROWDED = [
    ("baseline", 12_675_916, None),
    ("bnb-nf4", 4_570_444, 29.88),
    ("bnb-int8", 5_659_724, 54.94),
    ("quanto-int8", 5_611_676, 56.29),
    ("torchao-int8wo", 5_626_636, 53.56),
    ("gguf-Q8_0", 5_745_484, 56.77),
    ("gguf-Q4_0", 4_565_836, 31.28),
    ("bnb-nf4+keep3", 4_682_892, 31.33),
    ("identical-copy", 12_675_916, math.inf),  # images equal to the reference's: PSNR ∞
]


def frame_of(rows) -> pd.DataFrame:
    return pd.DataFrame(
        {"status": "ok", "bytes": [b for _, b, _ in rows], "psnr": [p for _, _, p in rows]},
        index=pd.Index([n for n, _, _ in rows], name="variant"),
    )


def labels_and_points(fig):
    """{variant: (label bbox, label text, point, leader line or None)} of a drawn quality plot, in display
    coordinates (a leader line as its two ends)."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    points = {
        c.get_gid().removeprefix("point:"): ax.transData.transform(c.get_offsets()[0])
        for c in ax.collections
        if (c.get_gid() or "").startswith("point:")
    }
    leaders = {
        line.get_gid().removeprefix("leader:"): line.get_transform().transform(np.column_stack(line.get_data()))
        for line in ax.lines
        if (line.get_gid() or "").startswith("leader:")
    }
    out = {}
    for t in ax.texts:
        gid = t.get_gid() or ""
        if gid.startswith("label:"):
            name = gid.removeprefix("label:")
            out[name] = (t.get_window_extent(renderer), t.get_text(), points[name], leaders.get(name))
    return out


def check_layout(fig, names):
    """Each label is read as its own point's: it is nearer that point than any other, or a leader line joins
    them (crossing no other label); no two labels overlap."""
    found = labels_and_points(fig)
    assert sorted(found) == sorted(names)
    for name, (box, _, point, leader) in found.items():
        centre = np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2])
        if leader is None:
            own = np.hypot(*(centre - point))
            for other, (_, _, p, _) in found.items():
                if other != name:
                    assert own < np.hypot(*(centre - p)), f"the label of {name!r} is nearer the point of {other!r}"
        else:
            start, end = leader
            assert np.allclose(start, point), f"the leader line of {name!r} does not start at its point"
            assert box.padded(1.0).contains(*end), f"the leader line of {name!r} does not end at its label"
            for other, (other_box, *_) in found.items():
                along = [start + t * (end - start) for t in np.linspace(0, 1, 50)]
                assert other == name or not any(other_box.contains(*q) for q in along), (
                    f"the leader line of {name!r} crosses the label of {other!r}"
                )
    for (a, (box_a, *_)), (b, (box_b, *_)) in itertools.combinations(found.items(), 2):
        assert not box_a.overlaps(box_b), f"the labels of {a!r} and {b!r} overlap"
    return found


def test_crowded_labels_sit_by_their_own_points_and_never_overlap():
    fig = plot_quality_vs_bytes(frame_of(CROWDED), "psnr", reference="baseline")
    found = check_layout(fig, [n for n, _, _ in CROWDED])
    assert [found[n][1].split()[0] for n, _, _ in CROWDED] == [str(i + 1) for i in range(len(CROWDED))]
    # the key names every variant with its number's size and value
    key = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert key[:3] == ["baseline: 12.1 MiB, the reference", "bnb-nf4: 4.4 MiB, 29.9 dB", "bnb-int8: 5.4 MiB, 54.9 dB"]
    assert key[-1] == "Pareto front"


def test_the_reference_is_drawn_off_the_psnr_scale_not_at_a_made_up_value():
    fig = plot_quality_vs_bytes(frame_of(CROWDED), "psnr", reference="baseline")
    ax = fig.axes[0]
    found = labels_and_points(fig)
    top = ax.transAxes.transform((0.0, 1.0))[1]
    for name in ("baseline", "identical-copy"):  # both PSNR ∞: on the top edge, labelled so
        assert found[name][2][1] == pytest.approx(top)
        assert "(∞ dB)" in found[name][1]
    assert found["baseline"][1] == "1 reference (∞ dB)"
    finite = [p for _, _, p in CROWDED if p is not None and math.isfinite(p)]
    assert ax.get_ylim()[1] < max(finite) + 0.3 * (max(finite) - min(finite))  # no room made for a fake 60 dB
    line = next(line for line in ax.lines if line.get_gid() == "reference-line")
    assert line.get_xdata()[0] == pytest.approx(12_675_916 / MiB)
    assert fig.dpi >= 90


@pytest.mark.parametrize("seed", range(6))
def test_random_clusters_keep_their_labels_apart(seed):
    rng = np.random.default_rng(seed)
    n = 10
    rows = [("base", 12 * MiB, None)]
    for i in range(n - 1):  # two tight clusters, as 8-bit and 4-bit variants make
        centre = (5.5, 55.0) if i % 2 else (4.5, 30.0)
        rows.append((f"v{i}", (centre[0] + rng.normal(0, 0.08)) * MiB, centre[1] + rng.normal(0, 1.0)))
    fig = plot_quality_vs_bytes(frame_of(rows), "psnr", reference="base")
    check_layout(fig, [r[0] for r in rows])


def test_other_metrics_and_empty_frames():
    frame = frame_of(CROWDED[:3]).assign(adherence=[1.0, 0.5, 0.75])
    check_layout(plot_quality_vs_bytes(frame, "adherence", reference="baseline"), ["baseline", "bnb-nf4", "bnb-int8"])
    empty = frame.assign(status="error")
    fig = plot_quality_vs_bytes(empty, "psnr", reference="baseline")
    assert [t.get_text() for t in fig.axes[0].texts] == ["no variant has both bytes and a value"]
