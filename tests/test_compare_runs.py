"""scripts/compare_runs.py: two trained runs compared on the same held-out pairs, image by image."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compare_runs.py"
spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)


def _scores(shape_ok: list[bool]) -> pd.DataFrame:
    """Eight relation images (four prompts × two seeds) and two single ones; only shape (and so all) varies."""
    prompts = [f"a red circle left of a {c} square" for c in ("blue", "green", "yellow", "purple") for _ in (0, 1)]
    prompts += ["a red circle", "a blue square"]
    return pd.DataFrame(
        {
            "prompt": prompts,
            "seed": list(range(10)),
            "form": ["relation"] * 8 + ["single"] * 2,
            "background_ok": True,
            "count_ok": True,
            "color_ok": True,
            "shape_ok": shape_ok,
            "size_ok": None,  # no size word in these prompts: not asked, so no row
            "relation_ok": [True] * 8 + [None, None],
            "all_ok": shape_ok,
        }
    )


def test_paired_differences_per_form_and_attribute():
    a = _scores([False] * 8 + [True, True])
    b = _scores([True] * 8 + [True, False])
    rows = {(r["form"], r["attribute"]): r for r in compare_runs.paired_differences(a, b)}
    relation = rows["relation", "shape"]
    assert (relation["n"], relation["a"], relation["b"], relation["difference"]) == (8, 0.0, 1.0, 1.0)
    assert relation["low"] == relation["high"] == 1.0  # every image gained: no resample says otherwise
    single = rows["single", "shape"]
    assert single["difference"] == -0.5 and single["low"] < 0  # one of two lost
    assert rows["all", "all"]["difference"] == pytest.approx(7 / 10)
    assert rows["relation", "color"]["difference"] == 0.0 and ("single", "relation") not in rows
    assert not any(r["attribute"] == "size" for r in rows.values())  # asked nowhere
    text = compare_runs.markdown(list(rows.values()))
    assert "| relation | shape | 8 | 0.0% | 100.0% | +100.0 [+100.0, +100.0] * |" in text
    assert "| relation | color | 8 | 100.0% | 100.0% | +0.0 [+0.0, +0.0] |" in text


def test_runs_on_other_pairs_are_refused_with_the_fix():
    a = _scores([True] * 10)
    with pytest.raises(ValueError, match=r"different held-out pairs \(10 and 9 rows, 1 differ\).*TEST_PAIRS"):
        compare_runs.paired_differences(a, a.iloc[:9])
    moved = a.assign(seed=a["seed"] + 1)
    with pytest.raises(ValueError, match="10 differ"):
        compare_runs.paired_differences(a, moved)


def test_command_line(tmp_path, capsys):
    for name, ok in (("a", [False] * 10), ("b", [True] * 10)):
        (tmp_path / name).mkdir()
        _scores(ok).to_csv(tmp_path / name / "heldout_scores.csv", index=False)
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "b" / "heldout_scores.csv")]) == 0
    assert "| all | all | 10 | 0.0% | 100.0% |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        compare_runs.main([str(tmp_path / "a"), str(tmp_path / "missing")])
    assert stop.value.code == 2
    assert "evaluate the run first" in capsys.readouterr().err
