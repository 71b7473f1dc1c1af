"""`data.workers: auto` (issue 17 item 3): on CUDA the cores of this process's share less one, at most 16; 4 on a
CPU; the number resolved before work starts and recorded in config.yaml and summary.json; a bad value is one line."""
import json

import pytest
import yaml
from click.testing import CliRunner

import bot.engine.threads as threads
import bot.pretrain.train as pt
from bot.cli import main


def test_the_auto_rule(monkeypatch):
    monkeypatch.setattr(threads, "cores", lambda: 16)
    assert threads.resolve_workers("auto", "cuda", {"LOCAL_WORLD_SIZE": "2"}) == 7
    assert threads.resolve_workers("auto", "cuda:0", {}) == 15
    assert threads.resolve_workers("auto", "cuda", {"LOCAL_WORLD_SIZE": "16"}) == 1
    monkeypatch.setattr(threads, "cores", lambda: 128)
    assert threads.resolve_workers("auto", "cuda", {}) == 16
    assert threads.resolve_workers("auto", "cpu", {}) == 4
    assert threads.resolve_workers(3, "cuda", {}) == 3 and threads.resolve_workers(0, "cpu", {}) == 0


def test_auto_is_the_default_for_real_data_and_the_run_records_the_number(tiny_imagefolder, tmp_path, monkeypatch):
    for stage_config in (pt.resolve_config("resnet50d", data=str(tiny_imagefolder)),):
        assert stage_config["data"]["workers"] == "auto"
    from bot.detection.train import resolve_config as detect_config
    from bot.segmentation.train import resolve_config as seg_config
    assert detect_config({"backbone": "resnet18d", "data": "voc:/x"})["data"]["workers"] == "auto"
    assert seg_config({"backbone": "resnet18d", "data": "ade20k:/x"})["data"]["workers"] == "auto"
    monkeypatch.setattr(threads, "CPU_WORKERS", 1)  # the CPU's number, 1 to keep the test light
    sets = ["train.batch_size=16", "data.image_size=32", "train.epochs=1"]
    cfg = pt.resolve_config("resnet50d", sets, data=str(tiny_imagefolder), arch="resnet18d", precision="fp32",
                            device="cpu")
    summary = pt.train(cfg, tmp_path / "run")
    assert summary["workers"] == 1
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["workers"] == 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["workers"] == 1


@pytest.mark.parametrize("args,message", [
    (["--workers", "four"], "error: --workers (data.workers) = 'four': expected an integer >= 0 or auto"),
    (["--workers", "-2"], "error: --workers (data.workers) = -2: out of range"),
    (["--set", "data.workers=many"], "data.workers"),
])
def test_a_bad_worker_count_is_one_line(tmp_path, args, message):
    result = CliRunner().invoke(main, ["pretrain", "--out", str(tmp_path / "x"), *args])
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "x").exists()
