"""One safetensors writer with one metadata encoding (every value JSON), the old encodings still read, and
malformed metadata (mean, std, class count, top-1) turned into one line with exit code 2 naming file and key."""
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from bot.cli import main
from bot.engine.errors import BotError
from bot.engine.weights_file import read_metadata, write_weights
from bot.pretrain.backbones import create_backbone
from bot.pretrain.checkpoints import read_checkpoint
from bot.pretrain.weights import save_classifier

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def test_one_encoding_every_value_json(tmp_path):
    meta = {"classes": ["a", "b"], "min_size": 64, "top1": None, "mean": [0.5, 0.25, 0.125], "backbone": {"arch": "x"},
            "name": "plain"}
    path = tmp_path / "w.safetensors"
    sha = write_weights(path, {"a": torch.arange(3.0)}, "detector", meta)
    with safe_open(str(path), "pt") as f:
        raw = f.metadata()
    assert raw["format"] == '"bot-detector-2"' and raw["min_size"] == "64" and raw["name"] == '"plain"'
    assert all(json.loads(v) is not None or k == "top1" for k, v in raw.items())
    got = read_metadata(path)
    assert (got.kind, got.encoding, got.values) == ("detector", 2, meta)
    import hashlib
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary name, nothing left behind


def test_the_three_stages_write_through_it(tmp_path):
    """pretrain's classifier, detection's and segmentation's models all carry format 2."""
    from bot.detection.model import save_detector
    from bot.segmentation.evaluate import save_segmenter

    model = torch.nn.Linear(2, 2)
    save_classifier(create_backbone("resnet18d", num_classes=3), tmp_path / "b.safetensors", arch="resnet18d",
                    num_classes=3, recipe="r", top1=0.5, mean=MEAN, std=STD)
    save_detector(model, tmp_path / "d.safetensors", {"classes": ["x"]})
    save_segmenter(model, tmp_path / "s.safetensors", {"head": "fcn", "num_classes": 4})
    kinds = {p: read_metadata(tmp_path / p) for p in ("b.safetensors", "d.safetensors", "s.safetensors")}
    assert [m.kind for m in kinds.values()] == ["backbone", "detector", "segmenter"]
    assert {m.encoding for m in kinds.values()} == {2}
    assert kinds["b.safetensors"].values == {"arch": "resnet18d", "variant": "D", "depth": 18, "num_classes": 3,
                                             "recipe": "r", "top1": 0.5, "mean": MEAN, "std": STD}
    assert kinds["s.safetensors"].values["num_classes"] == 4


def legacy_backbone(path, **over):
    """A backbone file as bot wrote them before format 2: plain strings, mean/std as JSON text."""
    meta = {"arch": "resnet18d", "variant": "D", "depth": "18", "num_classes": "10", "recipe": "old", "top1": "0.420000",
            "mean": json.dumps(MEAN), "std": json.dumps(STD), "format": "bot-backbone-1"}
    meta.update(over)
    save_file({k: v.contiguous() for k, v in create_backbone("resnet18d", num_classes=10).state_dict().items()},
              str(path), metadata={k: v for k, v in meta.items() if v is not None})
    return path


def test_old_files_still_read(tmp_path):
    ck = read_checkpoint(legacy_backbone(tmp_path / "old.safetensors"))
    assert (ck.arch, ck.num_classes, ck.recipe, ck.top1, ck.mean, ck.std, ck.origin) == \
        ("resnet18d", 10, "old", 0.42, tuple(MEAN), tuple(STD), "bot")
    assert read_checkpoint(legacy_backbone(tmp_path / "old2.safetensors", top1="")).top1 is None
    save_file({"a": torch.zeros(1)}, str(tmp_path / "d1.safetensors"),
              metadata={"format": "bot-detector-1", "classes": json.dumps(["x", "y"]), "min_size": "64"})
    assert read_metadata(tmp_path / "d1.safetensors").values == {"classes": ["x", "y"], "min_size": 64}
    save_file({"a": torch.zeros(1)}, str(tmp_path / "s1.safetensors"),
              metadata={"format": "bot-segmenter-1", "head": "fcn", "num_classes": "11"})
    s1 = read_metadata(tmp_path / "s1.safetensors")
    assert (s1.kind, s1.encoding, s1.values) == ("segmenter", 1, {"head": "fcn", "num_classes": "11"})
    save_file({"a": torch.zeros(1)}, str(tmp_path / "timm.safetensors"), metadata={"format": "pt"})
    foreign = read_metadata(tmp_path / "timm.safetensors")
    assert (foreign.kind, foreign.values) == (None, {"format": "pt"})


BAD = [  # (metadata override, the key the message must name, what it must say)
    ({"mean": "[0.4, 0.5]"}, "'mean'", "not three numbers"),
    ({"mean": "[0.4, 0.5, \"x\"]"}, "'mean'", "not three numbers"),
    ({"mean": "0.4,0.5,0.6"}, "'mean'", "not valid JSON"),
    ({"std": "[0.2, 0.0, 0.3]"}, "'std'", "not three positive numbers"),
    ({"std": "[0.2, NaN, 0.3]"}, "'std'", "not three positive numbers"),
    ({"num_classes": "ten"}, "'num_classes'", "not a whole number of classes"),
    ({"num_classes": "-3"}, "'num_classes'", "not a whole number of classes"),
    ({"num_classes": "7"}, "", "metadata says 7 classes, its classifier 'fc.weight' has 10"),
    ({"top1": "high"}, "'top1'", "not a number"),
]


@pytest.mark.parametrize("override,key,message", BAD)
def test_malformed_metadata_is_one_line_exit_2(tmp_path, override, key, message):
    path = legacy_backbone(tmp_path / "bad.safetensors", **override)
    seg = ["finetune-seg", "--backbone", str(path), "--out", str(tmp_path / "run"), "--image-size", "32",
           "--set", "data.synthetic_train=8", "--set", "data.synthetic_val=4", "--set", "data.synthetic_size=32"]
    for args in (["inspect", str(path)], seg):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and "Traceback" not in res.output
        assert key in lines[0] and message in lines[0], lines[0]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_malformed_new_encoding_is_one_line(tmp_path):
    path = tmp_path / "new.safetensors"
    save_classifier(create_backbone("resnet18d", num_classes=10), path, arch="resnet18d", num_classes=10, recipe="r",
                    top1=None)
    with safe_open(str(path), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        raw = f.metadata()
    save_file(state, str(path), metadata=dict(raw, num_classes="{oops"))
    with pytest.raises(BotError, match=r"new.safetensors: metadata 'num_classes' is not valid JSON \('\{oops'\)"):
        read_checkpoint(path)
    save_file(state, str(path), metadata=dict(raw, mean=json.dumps({"r": 1})))
    with pytest.raises(BotError, match=r"metadata 'mean' is \{'r': 1\}, not three numbers"):
        read_checkpoint(path)


WRITE_IN_A_PROCESS = """
import sys, torch
from bot.engine.weights_file import write_weights
from bot.pretrain.backbones import create_backbone
torch.manual_seed(0)
state = create_backbone("resnet10d", num_classes=3).state_dict()
meta = {k: i for i, k in enumerate(("zeta", "alpha", "mid", "beta", "omega", "kappa", "delta", "gamma"))}
print(write_weights(sys.argv[1], state, "backbone", dict(meta, arch="resnet10d", num_classes=3, mean=[0.5] * 3)))
"""


def test_identical_tensors_and_metadata_give_identical_files(tmp_path):
    """safetensors writes __metadata__ in a per-process hash order; ours sorts it: the same bytes in every process
    (string hashing seeded differently too), and the file still reads with safetensors and timm."""
    import hashlib
    import os
    import subprocess
    import sys

    import timm

    shas = []
    for seed in ("1", "2", "3"):
        path = tmp_path / f"w{seed}.safetensors"
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", WRITE_IN_A_PROCESS, str(path)], env=env, check=True,
                             capture_output=True, text=True).stdout.split()[-1]
        assert out == hashlib.sha256(path.read_bytes()).hexdigest()
        shas.append(out)
    assert len(set(shas)) == 1, shas
    path = tmp_path / "w1.safetensors"
    header = path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")]
    meta_keys = list(json.loads(header)["__metadata__"])
    assert meta_keys == sorted(meta_keys) and len(header) % 8 == 0
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["zeta"]) == 0 and "conv1.0.weight" in f.keys()
        stem = f.get_tensor("conv1.0.weight")
    torch.manual_seed(0)
    reference = create_backbone("resnet10d", num_classes=3).state_dict()
    assert torch.equal(stem, reference["conv1.0.weight"])
    from bot.pretrain.backbones import parse_arch
    model = timm.create_model(parse_arch("resnet10d")[0], pretrained=True, num_classes=3,
                              pretrained_cfg_overlay={"file": str(path), "num_classes": 3})  # timm's own loader, from the local file
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
