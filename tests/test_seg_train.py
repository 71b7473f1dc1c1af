"""finetune-seg end to end on a tiny synthetic set: run dir contract, evaluate-seg agreeing with training's own
evaluation (run and predicted-PNG paths), and an interrupted run resuming to the same weights."""
import json
import os
import signal

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from bot.cli import main
from bot.engine.loop import Interrupted
from bot.engine.rundir import sha256_file
from bot.pretrain.backbones import create_backbone
from bot.pretrain.weights import save_classifier
from bot.segmentation.train import finetune, resolve_config, run_from_cli

TINY = ["data.synthetic_train=16", "data.synthetic_val=6", "data.synthetic_size=32", "train.eval_every=1",
        "eval.batch_size=4", "train.log_every=1"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    old = os.environ.get("BOT_CACHE")
    os.environ["BOT_CACHE"] = str(root / "cache")
    torch.manual_seed(0)
    ckpt = root / "r18d.safetensors"
    save_classifier(create_backbone("resnet18d", num_classes=10), ckpt, arch="resnet18d", num_classes=10, recipe="test", top1=0.5)
    yield root, ckpt
    if old is None:
        os.environ.pop("BOT_CACHE")
    else:
        os.environ["BOT_CACHE"] = old


def options(ckpt):
    return dict(backbone=str(ckpt), epochs=2, batch_size=8, base_size=32, crop_size=32, lr=0.01)


@pytest.fixture(scope="module")
def finished(env):
    root, ckpt = env
    out = root / "run"
    args = ["finetune-seg", "--backbone", ckpt, "--epochs", 2, "--batch-size", 8, "--image-size", 32, "--lr", 0.01,
            "--out", out] + [x for s in TINY for x in ("--set", s)]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return out


def test_run_dir_contract(env, finished):
    _, ckpt = env
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["task"] == "segment" and summary["epochs"] == 2
    assert 0 <= summary["metrics"]["miou"] <= 1 and 0 <= summary["metrics"]["pixel_acc"] <= 1
    assert summary["backbone"]["sha256"] == sha256_file(ckpt) and summary["backbone"]["recipe"] == "test"
    assert summary["dataset"]["splits"] == {"training": 16, "validation": 6}
    assert summary["images_per_second"] > 0 and "versions" in summary
    assert len(summary["per_class_iou"]) == 11
    records = [json.loads(ln) for ln in (finished / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "miou" in r] == [2, 4]
    assert (finished / "per_class.md").read_text().startswith("| id | class | IoU %")
    assert (finished / "model.safetensors").is_file() and (finished / "last.ckpt").is_file()
    # per_image.npz: the validation masks by stem, and its counts sum to the summary's metrics
    import numpy as np

    from bot.compare.bootstrap import segment_stats
    from bot.engine.per_image import read_per_image
    per = read_per_image(finished / "per_image.npz")
    assert per.task == "segment" and len(per) == 6 and per["tp"].shape == (6, 11) and per.images[0] == "ADE_val_00000001"
    again = segment_stats(np.ones((1, 6), np.int32), per)
    for key in ("miou", "miou_all", "pixel_acc"):
        assert again[key][0] == pytest.approx(summary["metrics"][key], abs=1e-12)


def test_evaluate_seg_reproduces_the_run_and_its_predictions(env, finished):
    root, _ = env
    summary = json.loads((finished / "summary.json").read_text())
    preds = root / "preds"
    r = CliRunner().invoke(main, ["evaluate-seg", "--run", str(finished), "--save-predictions", str(preds),
                                  "--json", str(root / "eval.json")])
    assert r.exit_code == 0, r.output
    assert "| 0 | background |" in r.output
    got = json.loads((root / "eval.json").read_text())
    assert got["miou"] == pytest.approx(summary["metrics"]["miou"], abs=1e-9)
    assert len(list(preds.iterdir())) == 6
    r = CliRunner().invoke(main, ["evaluate-seg", "--predictions", str(preds), "--data",
                                  f"ade20k:{summary['dataset']['path']}", "--json", str(root / "eval2.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((root / "eval2.json").read_text())["miou"] == pytest.approx(got["miou"], abs=1e-9)
    (preds / next(iter(sorted(p.name for p in preds.iterdir())))).unlink()
    r = CliRunner().invoke(main, ["evaluate-seg", "--predictions", str(preds), "--data", f"ade20k:{summary['dataset']['path']}"])
    assert r.exit_code == 2 and "no prediction for" in r.output


def test_interrupted_run_resumes_to_the_same_weights(env, finished):
    root, _ = env
    out = root / "interrupted"
    cfg = resolve_config(options(env[1]), TINY)

    def stop(pos):
        if pos.step == 3:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(Interrupted):
        finetune(cfg, out, on_step=stop)
    assert not (out / "summary.json").exists()
    run_from_cli(out=str(out), resume=True)
    a, b = load_file(str(finished / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((out / "summary.json").read_text())["metrics"] == pytest.approx(
        json.loads((finished / "summary.json").read_text())["metrics"])


def test_ms_flip_evaluation_of_a_run_and_as_its_final_evaluation(env, finished, tmp_path):
    root, ckpt = env
    res = CliRunner().invoke(main, ["evaluate-seg", "--run", str(finished), "--mode", "ms-flip", "--json", str(tmp_path / "ms.json")])
    assert res.exit_code == 0, res.output
    ms = json.loads((tmp_path / "ms.json").read_text())
    assert ms["mode"] == "ms-flip" and 0.0 <= ms["miou_all"] <= ms["miou"] <= 1.0
    out = root / "msrun"
    args = ["finetune-seg", "--backbone", ckpt, "--epochs", 1, "--batch-size", 8, "--image-size", 32, "--out", out,
            "--set", "eval.mode=ms-flip", "--set", "eval.ms_scales=[0.75,1.25]"] + [x for s in TINY for x in ("--set", s)]
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_mode"] == "ms-flip" and set(summary["metrics"]) >= {"miou", "miou_all", "pixel_acc"}
    res = CliRunner().invoke(main, ["evaluate-seg", "--run", str(out), "--json", str(tmp_path / "again.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "again.json").read_text())["miou"] == pytest.approx(summary["metrics"]["miou"], abs=1e-9)
