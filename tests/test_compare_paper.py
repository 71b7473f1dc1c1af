"""`bot compare --paper`: the published numbers of ladder rows beside the measured ones in every format and the plot,
the paper's deltas against B-standard, and the measured deltas rebased on the B-standard row."""
from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from bot.cli import main
from bot.compare.command import build
from bot.compare.paper import paper_table
from bot.compare.render import to_csv, to_json, to_markdown
from compare_fixtures import make_run

A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture
def ladder(tmp_path):
    make_run(tmp_path / "pre" / "a-std", "pretrain", {"top1": 0.40}, sha=C, recipe="baseline", arch="resnet18a")
    make_run(tmp_path / "pre" / "b-std", "pretrain", {"top1": 0.50}, sha=A, recipe="resnet50b-standard", arch="resnet18b")
    make_run(tmp_path / "pre" / "d", "pretrain", {"top1": 0.60}, sha=B, recipe="resnet50d", arch="resnet18d")
    make_run(tmp_path / "det" / "b", "detect", {"voc07_map50": 0.30}, sha=A)
    make_run(tmp_path / "det" / "d", "detect", {"voc07_map50": 0.42}, sha=B)
    make_run(tmp_path / "seg" / "d", "segment", {"miou": 0.25, "pixel_acc": 0.70}, sha=B)
    return tmp_path


def test_the_data_file_holds_tables_6_8_9():
    t = paper_table()
    assert t["reference"] == "resnet50b-standard"
    assert t["rows"]["resnet50b-standard"] == {
        "label": "B-standard", "top1": 76.14, "table8": {"top1": 76.14, "voc07_map50": 77.54},
        "table9": {"top1": 76.14, "pixel_acc": 78.08, "miou_all": 37.05}}
    assert t["rows"]["resnet50d-mixup-distill"]["table8"]["voc07_map50"] == 81.33
    assert t["rows"]["resnet50d-cosine"]["table9"]["miou_all"] == 39.33
    assert t["rows"]["baseline"] == {"label": "A-standard", "top1": 75.87}


def paper_md_table(title: str) -> list[list[str]]:
    """The rows of one table of docs/paper.md section 5 (the project's copy of the paper's), "(verify)" dropped."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "paper.md").read_text().split(f"**{title}**", 1)[1]
    lines = [ln for ln in text.split("\n\n", 2)[1].splitlines() if ln.startswith("| ")][1:]
    return [[c.replace("(verify)", "").strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_every_ladder_row_is_each_tables_own():
    """Every number of paper.yaml against Tables 6, 8 and 9 as docs/paper.md copies them: the top-1 column from
    Table 6, and beside each transfer number the top-1 its own table prints (79.16 vs Table 6's 79.15 for mixup)."""
    rows = paper_table()["rows"]
    by_recipe = {r["label"]: k for k, r in rows.items()}
    for cells in paper_md_table("Table 6"):
        recipe = cells[2].strip("`")
        assert rows[recipe]["top1"] == float(cells[1]), recipe
    t8, t9 = paper_md_table("Table 8"), paper_md_table("Table 9")
    assert len(t8) == len(t9) == 7
    for cells in t8:
        row = rows[cells[3].strip("`")]
        assert row["table8"] == {"top1": float(cells[1]), "voc07_map50": float(cells[2])}, cells
    for cells in t9:
        row = rows[cells[4].strip("`")]
        assert row["table9"] == {"top1": float(cells[1]), "pixel_acc": float(cells[2]), "miou_all": float(cells[3])}
    assert rows["resnet50d-mixup"]["top1"] == 79.15 and rows["resnet50d-mixup"]["table8"]["top1"] == 79.16
    assert by_recipe["+ mixup w/o distill"] == "resnet50d-mixup"


def test_each_table_prints_its_own_top1_beside_its_numbers(tmp_path):
    make_run(tmp_path / "pre" / "b", "pretrain", {"top1": 0.50}, sha=A, recipe="resnet50b-standard", arch="resnet18b")
    make_run(tmp_path / "pre" / "m", "pretrain", {"top1": 0.60}, sha=B, recipe="resnet50d-mixup", arch="resnet18d")
    make_run(tmp_path / "det" / "m", "detect", {"voc07_map50": 0.42}, sha=B)
    comp, _ = build([tmp_path], paper=True)
    m = {r.recipe: r for r in comp.rows}["resnet50d-mixup"]
    assert m.paper["top1"] == 79.15 and m.paper_top1 == {"voc07_map50": 79.16, "pixel_acc": 79.16, "miou_all": 79.16}
    line = next(ln for ln in to_markdown(comp).splitlines() if ln.startswith("| m |"))
    assert "79.15 (+3.01)" in line and "81.10 (+3.56) @79.16" in line
    assert float({r["recipe"]: r for r in csv.DictReader(io.StringIO(to_csv(comp)))}["resnet50d-mixup"][
        "voc07_map50_paper_top1"]) == 79.16


def test_the_paper_mIoU_sits_beside_the_measured_mean_over_all_classes(tmp_path):
    """A run whose two means differ: the paper's mIoU (over all 150 classes) is set beside `miou_all`, not `miou`."""
    make_run(tmp_path / "pre" / "b", "pretrain", {"top1": 0.50}, sha=A, recipe="resnet50b-standard", arch="resnet18b")
    make_run(tmp_path / "pre" / "d", "pretrain", {"top1": 0.60}, sha=B, recipe="resnet50d", arch="resnet18d")
    make_run(tmp_path / "seg" / "d", "segment", {"miou": 0.30, "miou_all": 0.25, "pixel_acc": 0.70}, sha=B)
    comp, _ = build([tmp_path], paper=True)
    md = to_markdown(comp)
    head = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    line = next([c.strip() for c in ln.strip("|").split("|")] for ln in md.splitlines() if ln.startswith("| d |"))
    cell = dict(zip(head, line))
    assert cell["mIoU"] == "30.00" and cell["mIoU all"] == "25.00"
    assert cell["mIoU all paper"] == "38.88 (+1.83) @77.16" and "mIoU paper" not in cell
    assert "mIoU all = mean over every class" in md
    plain = to_markdown(build([tmp_path])[0])
    assert "mIoU all" not in plain.splitlines()[0]  # without --paper only the usual mean is shown


def test_paper_values_and_deltas_beside_the_measured_ones(ladder):
    comp, _ = build([ladder], paper=True)
    rows = {r.recipe: r for r in comp.rows}
    assert comp.baseline is rows["resnet50b-standard"]  # rebased from the first row (A-standard) onto B-standard
    d = rows["resnet50d"]
    assert d.deltas["top1"] == pytest.approx(10.0) and d.deltas["voc07_map50"] == pytest.approx(12.0)
    assert d.paper["voc07_map50"] == 78.30 and d.paper_deltas["voc07_map50"] == pytest.approx(0.76)
    assert d.paper_deltas["miou_all"] == pytest.approx(38.88 - 37.05) and d.paper_label == "D-efficient"
    assert rows["baseline"].paper == {"top1": 75.87} and rows["baseline"].paper_deltas == {"top1": pytest.approx(-0.27)}
    # an explicit --baseline is kept; the paper's deltas stay against B-standard
    comp2, _ = build([ladder], baseline="d", paper=True)
    assert comp2.baseline.recipe == "resnet50d"
    assert {r.recipe: r for r in comp2.rows}["resnet50d"].paper_deltas["voc07_map50"] == pytest.approx(0.76)


def test_every_format_carries_the_paper(ladder, tmp_path):
    comp, found = build([ladder], paper=True)
    md = to_markdown(comp)
    assert "| VOC07 mAP | VOC07 mAP paper |" in md.splitlines()[0]
    line = next(ln for ln in md.splitlines() if ln.startswith("| d |"))
    assert "78.30 (+0.76) @77.16" in line and "42.00 (+12.00)" in line
    rows = {r["recipe"]: r for r in csv.DictReader(io.StringIO(to_csv(comp)))}
    assert float(rows["resnet50d"]["voc07_map50_paper"]) == 78.30
    assert float(rows["resnet50d"]["voc07_map50_paper_delta"]) == pytest.approx(0.76)
    assert rows["resnet50b-standard"]["baseline"] == "1"
    data = json.loads(to_json(comp, found))
    assert data["paper"]["delta_against"] == "resnet50b-standard"
    j = {r["recipe"]: r for r in data["rows"]}["resnet50d"]["paper"]
    assert j["label"] == "D-efficient" and j["metrics"]["miou_all"]["value"] == 38.88
    assert j["metrics"]["voc07_map50"]["top1"] == 77.16
    plain, _ = build([ladder])
    assert "paper" not in to_csv(plain).splitlines()[0] and "paper" not in json.loads(to_json(plain))
    res = CliRunner().invoke(main, ["compare", str(ladder), "--paper", "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    assert "paper" in res.output and "77.54" in res.output
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_hollow_paper_points_in_the_plot(ladder, tmp_path, monkeypatch):
    import bot.compare.plot as plot
    drawn = []
    real = plot.plt.Axes.scatter

    def spy(self, *args, **kwargs):
        drawn.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(plot.plt.Axes, "scatter", spy)
    comp, _ = build([ladder], paper=True)
    plot.write_plot(comp, tmp_path / "p.png")
    hollow = [k for k in drawn if k.get("facecolors") == "none"]
    # VOC07 mAP panel: 2 ladder rows with both numbers; mIoU and pixAcc panels: 2 each as well
    assert len(hollow) == 6
