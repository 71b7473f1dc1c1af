"""`bot compare`'s paired-bootstrap intervals on fabricated run directories with per_image.npz files: every
format, a row against itself, unpaired rows and older runs (no interval, a note), a file that does not reproduce
its summary, --bootstrap 0, and seeds grouped into one row."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from bot.cli import main
from bot.compare.bootstrap import percentile_interval, resample_weights
from bot.compare.command import build
from bot.compare.join import Interval
from bot.compare.plot import write_plot
from bot.compare.render import to_csv, to_json, to_markdown
from bot.engine.per_image import write_per_image
from compare_fixtures import make_run

A, B, C, D = "a" * 64, "b" * 64, "c" * 64, "d" * 64
N = 400


def classify_run(path, hits, sha, images=None, recipe="baseline", top1=None):
    """A pretrain run whose per_image.npz says which of the images it got right (label 0; top-5 misses the rest)."""
    hits = np.asarray(hits)
    top5 = np.where(hits[:, None] == 1, 0, 1) + np.zeros((1, 5), int)
    top5[:, 1:] = 2
    acc = float(hits.mean()) if top1 is None else top1
    make_run(path, "pretrain", {"top1": acc, "top5": acc}, sha=sha, recipe=recipe)
    names = images if images is not None else [f"c/{i:04d}.png" for i in range(len(hits))]
    write_per_image(path / "per_image.npz", "classify", names, {"label": np.zeros(len(hits), np.int32),
                                                                 "top5": top5.astype(np.int32)})
    return path


@pytest.fixture
def hits():
    rng = np.random.default_rng(0)
    shared = rng.random(N)
    base = (shared < 0.60).astype(int)
    better = np.where(rng.random(N) < 0.9, shared < 0.72, rng.random(N) < 0.72).astype(int)
    return base, better


def test_intervals_in_every_format(tmp_path, hits):
    base, better = hits
    classify_run(tmp_path / "base", base, A)
    classify_run(tmp_path / "better", better, B, recipe="resnet50d")
    comp, _ = build([tmp_path], bootstrap=500)
    row = {r.name: r for r in comp.rows}["better"]
    # the interval is the percentile interval of the paired differences on the same resamples
    w = resample_weights(N, 500)
    by_hand = percentile_interval((w @ better - w @ base) / N * 100)
    assert (row.ci["top1"].low, row.ci["top1"].high) == pytest.approx(by_hand, abs=1e-9)
    assert row.ci["top1"].excludes_zero and row.ci["top1"].low < row.deltas["top1"] < row.ci["top1"].high
    ci = row.ci["top1"]
    md = to_markdown(comp)
    assert f"(+{row.deltas['top1']:.2f} [{ci.low:+.1f}, {ci.high:+.1f}]*)" in md
    assert "paired-bootstrap interval over the validation images (500 resamples" in md
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(to_csv(comp)))}
    assert float(rows["better"]["top1_ci_low"]) == pytest.approx(ci.low, rel=1e-5)
    assert float(rows["better"]["top1_ci_high"]) == pytest.approx(ci.high, rel=1e-5)
    assert rows["base"]["top1_ci_low"] == ""                        # the baseline has no difference
    data = json.loads(to_json(comp))
    m = {r["name"]: r for r in data["rows"]}["better"]["metrics"]["top1"]
    assert m["ci_excludes_zero"] is True and m["ci_low"] == pytest.approx(ci.low)
    assert data["bootstrap"]["resamples"] == 500
    res = CliRunner().invoke(main, ["compare", str(tmp_path), "--bootstrap", "500", "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    assert f"[{ci.low:+.1f}, {ci.high:+.1f}]*" in res.stdout
    assert (tmp_path / "p.png").stat().st_size > 20_000


def test_a_row_against_itself_is_exactly_zero(tmp_path, hits):
    base, _ = hits
    classify_run(tmp_path / "one", base, A)
    classify_run(tmp_path / "same", base, B)        # other weights, the very same predictions
    comp, _ = build([tmp_path], bootstrap=300)
    same = {r.name: r for r in comp.rows}["same"]
    assert same.ci["top1"] == Interval(0.0, 0.0) and not same.ci["top1"].excludes_zero
    assert "[+0.0, +0.0])" in to_markdown(comp)     # no mark


def test_unpaired_and_older_runs_get_no_interval_and_a_note(tmp_path, hits):
    base, better = hits
    classify_run(tmp_path / "base", base, A)
    classify_run(tmp_path / "other-images", better, B, images=[f"d/{i:04d}.png" for i in range(N)])
    classify_run(tmp_path / "fewer", better[:300], C)
    make_run(tmp_path / "old", "pretrain", {"top1": 0.7, "top5": 0.9}, sha=D)   # written before per-image files
    comp, _ = build([tmp_path])
    rows = {r.name: r for r in comp.rows}
    for name in ("other-images", "fewer", "old"):
        assert rows[name].ci == {} and rows[name].deltas["top1"] is not None
    assert "not paired" in rows["other-images"].ci_notes["classification"]
    assert "(300 vs 400, 300 in common)" in rows["fewer"].ci_notes["classification"]
    assert "has no per_image.npz" in rows["old"].ci_notes["classification"]
    md = to_markdown(comp)
    assert "note: old: classification: no interval:" in md and "[" not in md.split("\n")[3].split("|")[4]
    res = CliRunner().invoke(main, ["compare", str(tmp_path), "--format", "csv"])
    assert res.exit_code == 0 and {r["top1_ci_low"] for r in csv.DictReader(io.StringIO(res.stdout))} == {""}


def test_a_file_that_does_not_reproduce_its_summary_gets_no_interval(tmp_path, hits):
    base, better = hits
    classify_run(tmp_path / "base", base, A)
    classify_run(tmp_path / "edited", better, B, top1=0.99)     # summary.json says something else
    comp, _ = build([tmp_path])
    row = {r.name: r for r in comp.rows}["edited"]
    assert "top1" not in row.ci and "not the same evaluation" in row.ci_notes["classification"]


def test_bootstrap_zero_turns_intervals_off(tmp_path, hits):
    base, better = hits
    classify_run(tmp_path / "base", base, A)
    classify_run(tmp_path / "better", better, B)
    comp, _ = build([tmp_path], bootstrap=0)
    assert all(not r.ci for r in comp.rows) and "bootstrap interval" not in to_markdown(comp)
    res = CliRunner().invoke(main, ["compare", str(tmp_path), "--bootstrap", "-1"])
    assert res.exit_code == 2


def seeded(path, seed, hits, sha, detect_value):
    classify_run(path / "pre", hits, sha, recipe="resnet50d")
    (path / "pre" / "config.yaml").write_text(yaml.safe_dump(
        {"recipe": "resnet50d", "model": {"arch": "resnet10d"}, "train": {"seed": seed, "epochs": 3, "device": "cpu"}}))
    make_run(path / "det", "detect", {"voc07_map50": detect_value}, sha=sha)


def test_seeds_are_one_row_with_their_spread_beside_the_interval(tmp_path, hits):
    base, better = hits
    classify_run(tmp_path / "base", base, A)
    seeded(tmp_path / "s0", 0, better, B, 0.50)
    seeded(tmp_path / "s1", 1, np.roll(better, 7), C, 0.54)
    comp, _ = build([tmp_path], bootstrap=200)
    assert [r.name for r in comp.rows] == ["base", "pre"]
    row = comp.rows[1]
    assert row.seeds == [0, 1] and row.stats["top1"].n == 2 and row.stats["voc07_map50"].n == 2
    assert row.stats["voc07_map50"].mean == pytest.approx(52.0)
    # the interval is of the mean over both seeds against the baseline, on shared resamples
    w = resample_weights(N, 200)
    by_hand = percentile_interval(((w @ better + w @ np.roll(better, 7)) / 2 - w @ base) / N * 100)
    assert (row.ci["top1"].low, row.ci["top1"].high) == pytest.approx(by_hand, abs=1e-9)
    md = to_markdown(comp)
    assert "note: pre: 2 seeds (0, 1); seed-to-seed spread (training noise, not in the intervals): top-1 sd" in md
    assert write_plot(comp, tmp_path / "p.png").stat().st_size > 20_000
