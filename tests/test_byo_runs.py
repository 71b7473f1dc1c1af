"""Other people's ResNets through every stage, tiny: finetune-detect on a torchvision state dict, finetune-seg on a
timm safetensors file without bot metadata, pretrain starting from one (--init) and distilling from the other
(--teacher), and `bot compare` with the two third-party files and that bot run as rows joined by sha256."""
import csv
import io
import json

import pytest
import timm
import torch
import torchvision
from click.testing import CliRunner
from safetensors.torch import save_file

from bot.cli import main
from bot.engine.rundir import sha256_file
from detect_helpers import assert_rebuilt_detector_reproduces_the_run

DETECT_TINY = ["--epochs", "1", "--image-size", "64", "--batch-size", "4", "--set", "data.synthetic.n_train=8",
               "--set", "data.synthetic.n_test=4", "--set", "data.synthetic.size=64", "--set", "train.warmup_iters=1"]
SEG_TINY = ["--epochs", "1", "--batch-size", "8", "--image-size", "32", "--lr", "0.01", "--set", "data.synthetic_train=8",
            "--set", "data.synthetic_val=4", "--set", "data.synthetic_size=32", "--set", "eval.batch_size=4"]
PRETRAIN_TINY = ["--arch", "resnet18", "--epochs", "1", "--batch-size", "16", "--image-size", "32", "--workers", "0",
                 "--device", "cpu"]


def invoke(args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    torch.manual_seed(0)
    tv = root / "resnet18-f37072fd.pth"                 # torchvision's own file naming
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tv)
    tm = root / "timm_resnet18d.safetensors"             # timm's weights, no bot metadata
    save_file(timm.create_model("resnet18d", num_classes=10).state_dict(), str(tm))
    big = root / "timm_resnet18_1k.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), str(big))
    return {"root": root, "tv": tv, "timm": tm, "timm1k": big}


@pytest.fixture(scope="module")
def runs(files, tiny_imagefolder):
    root = files["root"]
    out = {"detect_tv": root / "runs" / "detect-tv", "seg_timm": root / "runs" / "seg-timm",
           "pre": root / "runs" / "pre", "seg_pre": root / "runs" / "seg-pre"}
    invoke(["finetune-detect", "--backbone", files["tv"], "--out", out["detect_tv"], *DETECT_TINY])
    invoke(["finetune-seg", "--backbone", files["timm"], "--out", out["seg_timm"], *SEG_TINY])
    invoke(["pretrain", "--data", tiny_imagefolder, "--init", files["tv"], "--teacher", files["timm"], *PRETRAIN_TINY,
            "--out", out["pre"]])
    invoke(["finetune-seg", "--backbone", out["pre"], "--out", out["seg_pre"], *SEG_TINY])
    for name in ("tv", "timm"):   # top-1 of the third-party files, measured
        out[f"cls_{name}"] = root / "runs" / f"cls-{name}"
        invoke(["evaluate-cls", "--weights", files[name], "--data", tiny_imagefolder, "--image-size", "32",
                "--out", out[f"cls_{name}"]])
    return out


def summary(run):
    return json.loads((run / "summary.json").read_text())


def test_finetune_summaries_record_the_third_party_backbone(files, runs):
    det = summary(runs["detect_tv"])["backbone"]
    assert det["sha256"] == sha256_file(files["tv"]) and det["source"] == str(files["tv"].resolve())
    assert (det["arch"], det["variant"], det["origin"], det["name"], det["top1"]) == \
        ("resnet18", "B", "torchvision", "resnet18-f37072fd", None)
    assert det["inferred"]["arch"].startswith("tensors")
    seg = summary(runs["seg_timm"])["backbone"]
    assert seg["sha256"] == sha256_file(files["timm"])
    assert (seg["arch"], seg["variant"], seg["origin"], seg["name"]) == ("resnet18d", "D", "state-dict", "timm_resnet18d")
    assert 0 <= summary(runs["seg_timm"])["metrics"]["miou"] <= 1
    # the detector rebuilds from its own file (the backbone's identity travels in its metadata)
    res = invoke(["evaluate-detect", "--weights", runs["detect_tv"], "--out", files["root"] / "eval.json"])
    again = json.loads((files["root"] / "eval.json").read_text())["metrics"]
    assert again["voc07_map50"] == pytest.approx(summary(runs["detect_tv"])["metrics"]["voc07_map50"], abs=1e-6), res.output
    assert_rebuilt_detector_reproduces_the_run(runs["detect_tv"])  # the mAP above is 0 at this scale: compare the boxes


def test_pretrain_init_and_teacher_from_third_party_files(files, runs):
    from safetensors.torch import load_file
    s = summary(runs["pre"])
    assert s["task"] == "pretrain" and s["backbone"]["arch"] == "resnet18"
    cfg = (runs["pre"] / "config.yaml").read_text()
    assert str(files["tv"]) in cfg and str(files["timm"]) in cfg
    # one epoch moved the weights away from the init, but not into something else: the stem is close to it
    init = torch.load(files["tv"], weights_only=True)
    after = load_file(str(runs["pre"] / "model.safetensors"))
    # (measured: 0.014 after the epoch; two independent random stems differ by about 0.13)
    assert 0 < (after["conv1.weight"] - init["conv1.weight"]).abs().max() < 0.05


def test_teacher_class_count_is_checked_against_the_data(files, tiny_imagefolder, tmp_path):
    res = CliRunner().invoke(main, ["pretrain", "--data", str(tiny_imagefolder), "--teacher", str(files["timm1k"]),
                                    *PRETRAIN_TINY, "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and "teacher has 1000 classes, the data has 10" in res.output
    assert not (tmp_path / "t" / "summary.json").exists()


def test_compare_rows_for_third_party_files_and_a_bot_run(files, runs):
    res = CliRunner().invoke(main, ["compare", str(files["root"] / "runs"), "--format", "csv"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(res.stdout))}
    assert set(rows) == {"pre", "resnet18-f37072fd", "timm_resnet18d"}
    assert rows["pre"]["top1"] != "" and rows["pre"]["miou"] != ""
    # the CSV carries 6 significant digits (compare/render.py): equal to within what they can hold
    assert float(rows["pre"]["miou"]) == pytest.approx(summary(runs["seg_pre"])["metrics"]["miou"] * 100, rel=1e-5)
    # `bot evaluate-cls` measured their top-1: joined to the rows by the files' sha256
    for name, key in (("resnet18-f37072fd", "cls_tv"), ("timm_resnet18d", "cls_timm")):
        assert float(rows[name]["top1"]) == pytest.approx(summary(runs[key])["metrics"]["top1"] * 100, rel=1e-5)
        assert rows[name]["classify_runs"] == str(runs[key])
    assert rows["resnet18-f37072fd"]["voc07_map50"] != ""
    assert float(rows["timm_resnet18d"]["miou"]) == pytest.approx(summary(runs["seg_timm"])["metrics"]["miou"] * 100, rel=1e-5)
    assert summary(runs["cls_tv"])["backbone"]["origin"] == "torchvision"
    assert summary(runs["cls_timm"])["dataset"]["classes_matched_by"].startswith("folder order")
    # with per-image files on both sides, the top-1 difference has an interval
    assert rows["resnet18-f37072fd"]["top1_ci_low"] != "" and rows["timm_resnet18d"]["top1_ci_high"] != ""
    assert rows["timm_resnet18d"]["miou_ci_low"] != ""        # from the two segmentation runs' pixel counts
    assert rows["timm_resnet18d"]["sha256"].startswith(sha256_file(files["timm"])[:12])


def test_evaluate_cls_refuses_an_imagenet_classifier_on_other_folders(files, tiny_imagefolder, tmp_path):
    res = CliRunner().invoke(main, ["evaluate-cls", "--weights", str(files["timm1k"]), "--data", str(tiny_imagefolder),
                                    "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "ImageNet-1k classifier (1000 classes, no names): expected ImageNet's wnid" in res.output
    assert not (tmp_path / "c").exists()


def test_inspect_a_finetune_run_and_a_pretrain_run(files, runs):
    res = invoke(["inspect", runs["detect_tv"]])
    assert "kind        finetuned detector (not a backbone checkpoint)" in res.output
    assert f"backbone    resnet18 resnet18-f37072fd sha256 {sha256_file(files['tv'])[:12]}" in res.output
    info = json.loads(invoke(["inspect", runs["pre"], "--json"]).output)
    assert (info["origin"], info["arch"], info["name"], info["num_classes"]) == ("bot", "resnet18", "pre", 10)
    assert info["inferred"]["arch"].startswith("metadata") and info["top1"] == summary(runs["pre"])["metrics"]["top1"]
