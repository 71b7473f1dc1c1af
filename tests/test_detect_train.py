"""Faster R-CNN on a backbone checkpoint: the model's set-up, a tiny end-to-end `bot finetune-detect` run, its
results scored again by `bot evaluate-detect`, and an exact resume."""
import json
import warnings

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from bot.cli import main
from bot.detection.model import build_detector, resolve_auto
from bot.engine.rundir import sha256_file
from bot.pretrain.backbones import create_backbone
from bot.pretrain.weights import save_classifier

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
TINY = ["--epochs", "2", "--image-size", "64", "--batch-size", "4", "--set", "data.synthetic.n_train=8",
        "--set", "data.synthetic.n_test=4", "--set", "data.synthetic.size=64", "--set", "train.eval_every=1",
        "--set", "train.warmup_iters=1"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bb") / "bb.safetensors"
    save_classifier(create_backbone("resnet18d", num_classes=10), path, arch="resnet18d", num_classes=10,
                    recipe="test", top1=0.5, mean=MEAN, std=STD)
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BOT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_detector_on_checkpoint(backbone):
    from torchvision.ops.misc import FrozenBatchNorm2d  # what timm.layers.freeze_batch_norm_2d converts to
    model, info = build_detector(backbone, 10, {"trainable_stages": 3}, 128, 213)
    body = model.backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    grads = {n.split(".")[0]: p.requires_grad for n, p in body.named_parameters()}
    assert grads == {"conv1": False, "layer1": False, "layer2": True, "layer3": True, "layer4": True}
    state = load_file(str(backbone))
    torch.testing.assert_close(body.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    torch.testing.assert_close(body.layer2[0].bn1.running_mean, state["layer2.0.bn1.running_mean"])
    assert model.transform.image_mean == pytest.approx(list(MEAN)) and model.transform.image_std == pytest.approx(list(STD))
    assert [s[0] for s in model.rpn.anchor_generator.sizes] == [5, 10, 20, 41, 82]  # (32..512) * 128 / 800
    assert info.sha256 == sha256_file(backbone)
    with pytest.warns(UserWarning, match="random init"):
        _, rinfo = build_detector("resnet18d", 10, {"norm": "bn", "trainable_stages": 5}, 128, 213)
    assert rinfo.recipe == "random-init"


def test_auto_norm_trains_a_random_init_backbone_whole(backbone):
    """Frozen BN on a random init would freeze random statistics and zero-gamma blocks switched off for good."""
    with pytest.warns(UserWarning, match="random init"):
        scratch, _ = build_detector("resnet18d", 10, {"norm": "auto", "trainable_stages": "auto"}, 128, 213)
    body = scratch.backbone.body
    assert any(type(m) is torch.nn.BatchNorm2d for m in body.modules())
    assert all(p.requires_grad for p in body.parameters())
    pretrained, _ = build_detector(backbone, 10, {"norm": "auto", "trainable_stages": "auto"}, 128, 213)
    grads = {n.split(".")[0]: p.requires_grad for n, p in pretrained.backbone.body.named_parameters()}
    assert grads == {"conv1": False, "layer1": False, "layer2": True, "layer3": True, "layer4": True}
    assert resolve_auto({"norm": "frozen", "trainable_stages": 1}, random_init=True) == {"norm": "frozen", "trainable_stages": 1}


def finetune(args):
    res = CliRunner().invoke(main, ["finetune-detect", *args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


@pytest.fixture(scope="module")
def straight_run(backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "straight"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BOT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            finetune(["--backbone", str(backbone), "--out", str(out), *TINY])
    return out


def test_finetune_writes_a_complete_run(straight_run, backbone):
    summary = json.loads((straight_run / "summary.json").read_text())
    assert summary["task"] == "detect" and summary["epochs"] == 2
    for k in ("voc07_map50", "voc_map50", "coco_map", "coco_map50"):
        assert 0.0 <= summary["metrics"][k] <= 1.0
    assert summary["backbone"]["sha256"] == sha256_file(backbone) and summary["backbone"]["recipe"] == "test"
    assert summary["dataset"]["splits"] == {"2007-trainval": 8, "2007-test": 4}
    assert set(summary["per_class"]) >= {"circle", "square"}
    lines = [json.loads(ln) for ln in (straight_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "voc07_map50" in r] == [1, 2]
    dets = json.loads((straight_run / "detections_2007-test.json").read_text())
    assert dets and set(dets[0]) == {"image_id", "category_id", "bbox", "score"}
    # per_image.npz: every detection with its match; the bootstrap's full-set numbers are the summary's
    import numpy as np

    from bot.compare.bootstrap import detect_stats
    from bot.engine.per_image import read_per_image
    per = read_per_image(straight_run / "per_image.npz")
    assert per.task == "detect" and len(per) == 4 and len(per["det_score"]) == len(dets) == len(per["coco_order"])
    again = detect_stats(np.ones((1, 4), np.int32), per)
    for k in ("voc07_map50", "voc_map50", "coco_map", "coco_map50"):
        assert again[k][0] == pytest.approx(summary["metrics"][k], abs=1e-12)
    assert all(1 <= d["category_id"] <= 10 and d["bbox"][2] > 0 for d in dets)
    # the written detections, scored again from the file, give the summary's numbers
    res = CliRunner().invoke(main, ["evaluate-detect", "--data", "voc:" + summary["dataset"]["path"], "--val-set", "2007-test",
                                    "--detections", str(straight_run / "detections_2007-test.json"),
                                    "--out", str(straight_run / "re.json")])
    assert res.exit_code == 0, res.output
    again = json.loads((straight_run / "re.json").read_text())["metrics"]
    for k in ("voc07_map50", "voc_map50", "coco_map50"):
        assert again[k] == pytest.approx(summary["metrics"][k], abs=0.01)
    # and so does the finetuned model itself, rebuilt from model.safetensors
    res = CliRunner().invoke(main, ["evaluate-detect", "--weights", str(straight_run), "--out", str(straight_run / "w.json")])
    assert res.exit_code == 0, res.output
    again = json.loads((straight_run / "w.json").read_text())["metrics"]
    for k in ("voc07_map50", "voc_map50", "coco_map", "coco_map50"):
        assert again[k] == pytest.approx(summary["metrics"][k], abs=1e-6)


def test_resume_mid_epoch_continues_exactly(straight_run, backbone, tmp_path):
    """SIGINT in the middle of epoch 1, then --resume: bit for bit the uninterrupted run's weights (the RPN/RoI
    samplers draw from the global RNG, which the loop seeds per step)."""
    import os
    import signal

    from bot.detection.train import run_from_cli
    from bot.engine.loop import Interrupted

    out = tmp_path / "resumed"

    def interrupt(pos):
        if pos.step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    args = dict(zip([a.lstrip("-").replace("-", "_") for a in TINY[0:6:2]], TINY[1:6:2]))
    sets = tuple(TINY[7::2])
    options = {k: (int(v) if v.isdigit() else v) for k, v in args.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Interrupted):
            run_from_cli(backbone=str(backbone), out=str(out), sets=sets, on_step=interrupt, **options)
        state = torch.load(out / "last.ckpt", weights_only=True)
        assert (state["epoch"], state["step"]) == (0, 1)
        res = CliRunner().invoke(main, ["finetune-detect", "--backbone", str(backbone), "--out", str(out)])
        assert res.exit_code == 2 and (f"continue it with `bot finetune-detect --backbone {backbone} --out {out} "
                                       f"--resume auto`") in res.output
        finetune(["--out", str(out), "--resume"])
    a, b = load_file(str(straight_run / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
