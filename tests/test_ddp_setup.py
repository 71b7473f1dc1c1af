"""DDP set-up decisions (issue 17 item 13): which models need their buffers broadcast, `--device cuda:N` under
torchrun refused in one line, and evaluate-seg under 2 gloo processes: one rank prints and writes, and both leave
their process group destroyed."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner
from timm.layers import freeze_batch_norm_2d

from bot.cli import main
from bot.engine.distributed import pick_device
from bot.engine.errors import BotError
from bot.engine.stage import rank_local_buffers
from bot.pretrain.backbones import create_backbone
from bot.pretrain.weights import save_classifier

from test_ddp_failures import spawn


def test_only_running_batchnorm_statistics_are_broadcast():
    conv_bn = lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    assert rank_local_buffers(conv_bn())                                          # pretraining: BN trains per rank
    assert not rank_local_buffers(freeze_batch_norm_2d(conv_bn()))                # detection's frozen BN
    assert not rank_local_buffers(torch.nn.SyncBatchNorm.convert_sync_batchnorm(conv_bn()))  # global statistics
    assert not rank_local_buffers(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4)))
    assert rank_local_buffers(create_backbone("resnet18d", num_classes=10))


def test_cuda_n_under_torchrun_is_one_line_before_any_start():
    with pytest.raises(BotError, match=r"--device cuda:1: under torchrun \(--nproc\) every process takes the GPU"):
        pick_device("cuda:1", world_size=2)  # said before "no CUDA device" on a machine without one
    result = CliRunner().invoke(main, ["pretrain", "--device", "cuda:1", "--nproc", "2", "--epochs", "1"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda:1: under torchrun"), result.output


EVALUATE = textwrap.dedent("""
    import sys
    import torch.distributed as dist
    from bot.cli import main
    try:
        main(sys.argv[1:], standalone_mode=False)
    finally:
        print("process group left:", dist.is_initialized(), flush=True)
""")


def test_evaluate_seg_under_two_processes_prints_and_writes_once(tmp_path):
    cache = tmp_path / "cache"
    os.environ["BOT_CACHE"] = str(cache)
    torch.manual_seed(0)
    ckpt = tmp_path / "r18d.safetensors"
    save_classifier(create_backbone("resnet18d", num_classes=10), ckpt, arch="resnet18d", num_classes=10,
                    recipe="test", top1=0.5)
    sets = ["data.synthetic_train=8", "data.synthetic_val=6", "data.synthetic_size=32", "data.workers=0",
            "eval.batch_size=2", "train.log_every=1"]
    run = tmp_path / "run"
    args = ["finetune-seg", "--backbone", str(ckpt), "--epochs", "1", "--batch-size", "4", "--image-size", "32",
            "--device", "cpu", "--out", str(run)] + [x for s in sets for x in ("--set", s)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    one = tmp_path / "one.json"
    result = CliRunner().invoke(main, ["evaluate-seg", "--run", str(run), "--device", "cpu", "--mode", "whole",
                                       "--json", str(one)])
    assert result.exit_code == 0, result.output
    single = json.loads(one.read_text())["miou"]
    script = tmp_path / "evaluate.py"
    script.write_text(EVALUATE)
    out = tmp_path / "eval.json"
    procs = spawn(script, ["evaluate-seg", "--run", str(run), "--device", "cpu", "--mode", "whole",
                           "--json", str(out)], tmp_path)
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "mIoU" in outputs[0] and "mIoU" not in outputs[1], outputs
    assert all("process group left: False" in text for text in outputs), outputs
    assert json.loads(out.read_text())["miou"] == pytest.approx(single, abs=1e-9)
