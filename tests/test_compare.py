"""`bot compare` on fabricated run directories: the join by sha256, deltas, spread, every format read back,
missing stages blank, unfinished and corrupt runs, same-named runs, the plot, and the CLI's errors."""
from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner
from rich.console import Console

from bot.cli import main
from bot.compare.command import build
from bot.compare.discover import unique_names
from bot.compare.join import join
from bot.compare.plot import write_plot
from bot.compare.render import print_terminal, to_csv, to_json, to_markdown
from compare_fixtures import make_run

A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture
def world(tmp_path):
    """Two backbones trained in one folder, their fine-tunes scattered elsewhere under unrelated names."""
    make_run(tmp_path / "pre" / "std", "pretrain", {"top1": 0.70, "top5": 0.90}, sha=A, recipe="baseline", arch="resnet18b")
    make_run(tmp_path / "pre" / "tricks", "pretrain", {"top1": 0.75, "top5": 0.92}, sha=B, recipe="resnet50d", arch="resnet18d")
    # Named as if they belonged to the other backbone: only the sha256 may decide.
    make_run(tmp_path / "elsewhere" / "tricks-det", "detect", {"voc07_map50": 0.50, "coco_map": 0.20}, sha=A)
    for i, v in enumerate((0.52, 0.56, 0.60)):
        make_run(tmp_path / "det" / f"rep{i}", "detect", {"voc07_map50": v, "coco_map": 0.25}, sha=B)
    make_run(tmp_path / "seg" / "s", "segment", {"miou": 0.40, "pixel_acc": 0.80}, sha=A)
    return tmp_path


def rows_by_name(comp):
    return {r.name: r for r in comp.rows}


def test_join_by_sha256_deltas_and_spread(world):
    comp, found = build([world])
    rows = rows_by_name(comp)
    assert list(rows) == ["std", "tricks"] and comp.baseline is rows["std"]
    std, tricks = rows["std"], rows["tricks"]
    assert [r.path.name for r in std.detect] == ["tricks-det"]
    assert [r.path.name for r in tricks.detect] == ["rep0", "rep1", "rep2"]
    assert tricks.segment == [] and "miou" not in tricks.stats
    s = tricks.stats["voc07_map50"]
    assert (s.n, s.mean, s.min, s.max) == (3, pytest.approx(56.0), pytest.approx(52.0), pytest.approx(60.0))
    assert s.std == pytest.approx(4.0)          # sample std of 52, 56, 60
    assert tricks.deltas["voc07_map50"] == pytest.approx(6.0)    # 56 - 50
    assert tricks.deltas["top1"] == pytest.approx(5.0)
    assert tricks.deltas["coco_map"] == pytest.approx(5.0)
    assert tricks.deltas["miou"] is None        # the baseline has mIoU, this row does not
    assert std.deltas["top1"] == 0


def test_baseline_by_name_recipe_and_sha(world):
    runs = build([world])[1].runs
    assert join(runs, "tricks").baseline.name == "tricks"
    assert join(runs, "resnet50d").baseline.name == "tricks"
    assert join(runs, B[:8]).baseline.name == "tricks"
    comp = join(runs, "tricks")
    assert rows_by_name(comp)["std"].deltas["voc07_map50"] == pytest.approx(-6.0)


def test_csv_and_json_read_back_with_blanks(world, tmp_path):
    comp, found = build([world])
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(to_csv(comp)))}
    assert float(rows["tricks"]["voc07_map50"]) == pytest.approx(56.0)
    assert float(rows["tricks"]["voc07_map50_delta"]) == pytest.approx(6.0)
    assert (float(rows["tricks"]["voc07_map50_min"]), float(rows["tricks"]["voc07_map50_max"])) == (52.0, 60.0)
    assert rows["tricks"]["voc07_map50_n"] == "3"
    assert rows["tricks"]["miou"] == "" and rows["tricks"]["miou_n"] == ""   # missing stage: blank, not 0
    assert rows["std"]["baseline"] == "1" and rows["tricks"]["baseline"] == "0"
    data = json.loads(to_json(comp, found))
    j = {r["name"]: r for r in data["rows"]}
    assert data["baseline"] == "std"
    assert j["tricks"]["metrics"]["miou"] is None
    assert j["tricks"]["metrics"]["voc07_map50"]["std"] == pytest.approx(4.0)
    assert j["std"]["metrics"]["top1"]["mean"] == pytest.approx(70.0)
    assert len(j["tricks"]["runs"]["detect"]) == 3 and j["tricks"]["sha256"] == B


def test_markdown_and_terminal_read_back(world):
    comp, found = build([world])
    lines = [ln for ln in to_markdown(comp).splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = {c[0]: dict(zip(head, c)) for c in ([x.strip() for x in ln.strip("|").split("|")] for ln in lines[2:])}
    assert head[:3] == ["backbone", "recipe", "arch"] and "VOC07 mAP" in head and "mIoU" in head
    assert cells["tricks"]["VOC07 mAP"] == "56.00 (+6.00) [52.00–60.00, n=3]"
    assert cells["tricks"]["top-1"] == "75.00 (+5.00)"
    assert cells["tricks"]["mIoU"] == ""
    assert cells["std (baseline)"]["top-1"] == "70.00"
    console = Console(record=True, width=200, file=io.StringIO())
    print_terminal(comp, found, console)
    text = console.export_text()
    assert "std (baseline)" in text and "56.00" in text and "(+6.00)" in text and "[52.00–60.00, n=3]" in text


def test_unfinished_corrupt_and_same_names(tmp_path):
    make_run(tmp_path / "x" / "r50", "pretrain", {"top1": 0.6, "top5": 0.8}, sha=A)
    make_run(tmp_path / "y" / "r50", "pretrain", {"top1": 0.5, "top5": 0.7}, sha=B)
    (tmp_path / "y" / "half").mkdir()
    (tmp_path / "y" / "half" / "config.yaml").write_text("task: pretrain\n")
    (tmp_path / "y" / "half" / "metrics.jsonl").write_text('{"epoch": 1, "step": 4}\n{"epoch": 2, "step": 8}\n')
    (tmp_path / "y" / "half" / "last.ckpt").write_bytes(b"x")
    bad = make_run(tmp_path / "z" / "bad", "detect", {"voc07_map50": 0.5}, sha=A) / "summary.json"
    bad.write_text('{"task": "detect", "metrics": {')
    result = CliRunner().invoke(main, ["compare", str(tmp_path), "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["name"] for r in rows] == ["x/r50", "y/r50"]
    assert [float(r["top1"]) for r in rows] == [60.0, 50.0]
    assert "voc07_map50" not in rows[0]             # the only detect run was corrupt: skipped
    assert f"{bad}: not valid JSON" in result.stderr and "skipped" in result.stderr
    assert "unfinished" in result.stderr and str(tmp_path / "y" / "half") in result.stderr
    assert "last logged epoch 2" in result.stderr


def test_unique_names():
    from pathlib import Path
    assert unique_names([Path("/r/a/x"), Path("/r/b/x"), Path("/r/b/y")]) == ["a/x", "b/x", "y"]
    assert unique_names([Path("/p/q/x"), Path("/s/q/x")]) == ["p/q/x", "s/q/x"]


def test_orphan_weights_and_random_init(tmp_path):
    make_run(tmp_path / "pre", "pretrain", {"top1": 0.6, "top5": 0.8}, sha=A)
    make_run(tmp_path / "d1", "segment", {"miou": 0.3, "pixel_acc": 0.7}, sha=C, top1=0.65,
             source="/somewhere/imported/model.safetensors")
    make_run(tmp_path / "d2", "segment", {"miou": 0.1, "pixel_acc": 0.5}, sha="", arch="resnet18d")
    comp, _ = build([tmp_path])
    rows = rows_by_name(comp)
    assert list(rows) == ["pre", "imported", "random-init resnet18d"]
    assert rows["imported"].stats["top1"].mean == pytest.approx(65.0)    # from the checkpoint's metadata
    assert rows["imported"].deltas["top1"] == pytest.approx(5.0)
    assert rows["random-init resnet18d"].stats["miou"].mean == pytest.approx(10.0)
    assert "top1" not in rows["random-init resnet18d"].stats


def test_cli_files_and_plot(world, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compare", str(world / "pre"), str(world / "det"), str(world / "elsewhere"),
                                       "--baseline", "tricks", "--csv", str(out / "c.csv"), "--json", str(out / "c.json"),
                                       "--markdown", str(out / "c.md"), "--plot", str(out / "c.png")])
    assert result.exit_code == 0, result.output
    assert "tricks (baseline)" in result.stdout
    data = json.loads((out / "c.json").read_text())
    assert data["baseline"] == "tricks"
    assert {r["name"]: r for r in data["rows"]}["std"]["metrics"].get("miou") is None   # seg/ not given
    assert (out / "c.csv").read_text().startswith("name,")
    assert "| tricks (baseline) |" in (out / "c.md").read_text()
    png = (out / "c.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    import matplotlib.image
    h, w, _ = matplotlib.image.imread(out / "c.png").shape
    assert w > 1000 and h > 800


def test_plot_with_a_single_row(tmp_path):
    make_run(tmp_path / "only", "pretrain", {"top1": 0.6, "top5": 0.8}, sha=A)
    comp, _ = build([tmp_path])
    assert write_plot(comp, tmp_path / "p.png").stat().st_size > 5_000


@pytest.mark.parametrize("args,needle", [
    (["compare", "/no/such/dir"], "/no/such/dir: no such file or directory"),
    (["compare", "{world}", "--baseline", "nope"], "--baseline nope: no such backbone"),
    (["compare", "{world}", "--plot", "{world}/p.gif"], "p.gif: plot file must end in"),
    (["compare", "{empty}"], "no finished run directories"),
])
def test_cli_errors(world, tmp_path, args, needle):
    (tmp_path / "empty").mkdir()
    args = [a.format(world=world, empty=tmp_path / "empty") for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and needle in result.stderr, result.output
