"""The one checkpoint reader: timm and torchvision ResNets (random weights, nothing downloaded) in every format a
user may hand us, the arch inferred from their tensors, bit-equal feature maps, the malicious pickle refused
unrun, `timm:NAME` from a faked local Hugging Face cache, and `bot inspect`."""
import json

import pytest
import timm
import torch
import torchvision
from click.testing import CliRunner
from safetensors.torch import save_file

from bot.cli import main
from bot.engine.errors import BotError
from bot.engine.rundir import sha256_file
from bot.pretrain.arch_infer import check_fits, infer_arch
from bot.pretrain.checkpoints import read_checkpoint
from bot.pretrain.weights import load_backbone, save_classifier
from bot.pretrain.backbones import create_backbone

IMAGENET = (0.485, 0.456, 0.406)

# Every depth x variant that timm and torchvision name (within bot's depths), with what the tensors must say.
TIMM_NAMED = ["resnet18", "resnet18d", "resnet26", "resnet26d", "resnet34", "resnet34d", "resnet50", "resnet50c",
              "resnet50d", "resnet101", "resnet101c", "resnet101d", "resnet152", "resnet152c", "resnet152d"]
TV_NAMED = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
BOT_ONLY = ["resnet10", "resnet10c", "resnet10d", "resnet18c", "resnet26c", "resnet34c"]   # registered by bot with timm


def meta_state(builder, name):
    with torch.device("meta"):
        return builder(name).state_dict()


@pytest.mark.parametrize("lib,name", [("timm", n) for n in TIMM_NAMED + BOT_ONLY] + [("torchvision", n) for n in TV_NAMED])
def test_arch_inferred_from_shapes(lib, name):
    builder = (lambda n: timm.create_model(n)) if lib == "timm" else (lambda n: getattr(torchvision.models, n)())
    state = meta_state(builder, name)
    guess = infer_arch(state, name)
    depth = int("".join(c for c in name[len("resnet"):] if c.isdigit()))
    variant = name[-1].upper() if name[-1] in "cd" else "B"
    assert (guess.arch, guess.depth, guess.variant) == (name, depth, variant)
    check_fits(state, guess.arch, name)
    # A and B share their tensors: without metadata or --arch a bottleneck B comes with a note, never silently
    assert bool(guess.notes) == (variant == "B" and depth not in (10, 18, 34))


@pytest.mark.parametrize("requested,ok", [("resnet50a", True), ("resnet50b", True), ("resnet50", True),
                                          ("resnet50c", False), ("resnet101", False)])
def test_arch_override_is_checked_against_the_tensors(requested, ok):
    state = meta_state(lambda n: timm.create_model(n), "resnet50")
    if ok:
        guess = infer_arch(state, "f", requested=requested)
        assert guess.variant == (requested[-1].upper() if requested[-1] in "ab" else "B")
        assert "--arch" in guess.how["variant"] and not guess.notes
    else:
        with pytest.raises(BotError, match=f"f: --arch says {requested}, the tensors hold resnet50; "
                                           r"first key that does not fit: (unexpected key 'conv1|missing key 'layer3\.6)"):
            infer_arch(state, "f", requested=requested)


@pytest.mark.parametrize("builder,message", [
    (lambda: torchvision.models.wide_resnet50_2(), "does not fit resnet50: key 'layer1.0.conv1.weight' has shape [128, 64, 1, 1]"),
    (lambda: timm.create_model("resnet50s"), "does not fit resnet50c: key 'conv1.0.weight' has shape [64, 3, 3, 3]"),
    (lambda: timm.create_model("resnet200"), "none of depths 10, 18, 26, 34, 50, 101, 152"),
    (lambda: timm.create_model("vit_tiny_patch16_224"), "not a ResNet state dict (no layer1..layer4 blocks; first key 'cls_token'"),
])
def test_non_resnet_files_get_one_line_naming_the_key(builder, message):
    with torch.device("meta"):
        state = builder().state_dict()
    with pytest.raises(BotError) as e:
        guess = infer_arch(state, "x.pth")
        check_fits(state, guess.arch, "x.pth")
    assert message in str(e.value) and "\n" not in str(e.value)


# ---- real files, every format ------------------------------------------------------------------------------------
def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and BatchNorm statistics (a fresh BN's mean 0 / var 1 would hide a stats mix-up)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name
                        else torch.randn(t.shape, generator=g) * (0.1 if t.dim() > 1 else 0.5))
    return model.eval()


def stage_features(model, x) -> list[torch.Tensor]:
    """layer1..layer4 outputs of a timm or torchvision ResNet, by its own modules."""
    act = model.act1 if hasattr(model, "act1") else model.relu
    x = model.maxpool(act(model.bn1(model.conv1(x))))
    out = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        out.append(x)
    return out


def gluon_names(state):
    """GluonCV's BatchNorm names (gamma/beta) and no num_batches_tracked."""
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        bn = k.rsplit(".", 1)[0]
        if f"{bn}.running_mean" in state and k.endswith((".weight", ".bias")):
            k = bn + (".gamma" if k.endswith(".weight") else ".beta")
        out[k] = v
    return out


def write(fmt: str, state: dict, folder, stem: str):
    if fmt == "safetensors":
        path = folder / f"{stem}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "pth":
        path = folder / f"{stem}.pth"
        torch.save(state, path)
    elif fmt == "state_dict":
        path = folder / f"{stem}.ckpt"
        torch.save({"state_dict": state, "epoch": 7, "hyper_parameters": {"lr": 0.1}}, path)
    elif fmt == "model":
        path = folder / f"{stem}.pt"
        torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    elif fmt == "ddp":
        path = folder / f"{stem}.bin"
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    elif fmt == "gluon":
        path = folder / f"{stem}.pth"
        torch.save(gluon_names(state), path)
    return path


FORMATS = ["safetensors", "pth", "state_dict", "model", "ddp", "gluon"]
SOURCES = {  # the fine-tune-sized models; the depth-50+ ones are covered by shape inference above
    "tv-resnet18": (lambda: torchvision.models.resnet18(num_classes=10), "resnet18", "B"),
    "timm-resnet18d": (lambda: timm.create_model("resnet18d", num_classes=10), "resnet18d", "D"),
    "timm-resnet26": (lambda: timm.create_model("resnet26", num_classes=10), "resnet26", "B"),
    "timm-resnet26d": (lambda: timm.create_model("resnet26d", num_classes=10), "resnet26d", "D"),
}


@pytest.fixture(scope="module")
def built():
    return {key: randomised(make(), seed) for seed, (key, (make, _, _)) in enumerate(SOURCES.items())}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("key", ["tv-resnet18", "timm-resnet26d"])
def test_every_format_reads_to_the_same_tensors(built, tmp_path, key, fmt):
    source = built[key].state_dict()
    _, arch, variant = SOURCES[key]
    path = write(fmt, source, tmp_path, key)
    ck = read_checkpoint(path)
    assert (ck.arch, ck.variant, ck.num_classes) == (arch, variant, 10)
    assert ck.sha256 == sha256_file(path) and ck.origin == "state-dict" and ck.name == key
    assert ck.mean == IMAGENET and any("ImageNet" in n for n in ck.notes)
    expected = {k: v for k, v in source.items() if not (fmt == "gluon" and k.endswith("num_batches_tracked"))}
    assert ck.state.keys() == expected.keys()
    assert all(torch.equal(ck.state[k], v) for k, v in expected.items())


@pytest.mark.parametrize("key,fmt", [("tv-resnet18", "pth"), ("timm-resnet18d", "safetensors"), ("timm-resnet26", "ddp"),
                                     ("timm-resnet26d", "gluon")])
def test_bot_backbone_features_equal_the_source_models(built, tmp_path, key, fmt):
    """bot's feature extractor and classifier on the file give the source model's stage outputs and logits, bit for bit."""
    source = built[key]
    path = write(fmt, source.state_dict(), tmp_path, key)
    body, info = load_backbone(path, features_only=True, out_indices=(1, 2, 3, 4), quiet=True)
    classifier, _ = load_backbone(path, quiet=True)
    assert info.channels == [f.shape[1] for f in stage_features(source, torch.zeros(1, 3, 32, 32))]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, theirs = body.eval()(x), stage_features(source, x)
        assert [(a - b).abs().max().item() for a, b in zip(ours, theirs)] == [0.0] * 4
        assert torch.equal(classifier.eval()(x), source(x))


def test_a_is_told_from_b_only_by_metadata_or_arch(built, tmp_path):
    """Same tensors, different network: the stride placement matters, so `--arch resnet26a` gives other features."""
    path = write("pth", built["timm-resnet26"].state_dict(), tmp_path, "r26")
    b, binfo = load_backbone(path, features_only=True, quiet=True)
    a, ainfo = load_backbone(path, arch="resnet26a", features_only=True, quiet=True)
    assert (binfo.variant, ainfo.variant, ainfo.arch) == ("B", "A", "resnet26a")
    assert binfo.inferred["variant"].startswith("default B") and ainfo.inferred["variant"].startswith("--arch")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert [f.shape for f in a.eval()(x)] == [f.shape for f in b.eval()(x)]
        assert not torch.equal(a(x)[-1], b(x)[-1])
    bot = tmp_path / "r26a.safetensors"
    save_classifier(create_backbone("resnet26a", num_classes=10), bot, arch="resnet26a", num_classes=10, recipe="r", top1=0.25)
    ck = read_checkpoint(bot)
    assert (ck.arch, ck.variant, ck.origin, ck.top1, ck.recipe) == ("resnet26a", "A", "bot", 0.25, "r")
    assert ck.how["variant"].startswith("metadata") and not ck.notes


def test_torchvision_file_name_gives_the_origin(built, tmp_path):
    path = write("pth", built["tv-resnet18"].state_dict(), tmp_path, "resnet18-f37072fd")
    assert read_checkpoint(path).origin == "torchvision"


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned.txt"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": Evil()}, path)
    res = CliRunner().invoke(main, ["finetune-detect", "--backbone", str(path), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"{path}: refused: reading it would unpickle io.open" in res.output  # builtins.open is io.open
    assert not marker.exists() and not (tmp_path / "run" / "summary.json").exists()
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 2 and not marker.exists()
    torch.load(path, weights_only=False)  # what the refusal saved us from: the payload does run when unpickled
    assert marker.exists()


@pytest.mark.parametrize("content,message", [
    (b"not weights at all", "neither a safetensors nor a PyTorch weights file"),
    ("list", "holds a list, not a state dict"),
    ("nested", "not a state dict: entry 'epoch' is a int"),
])
def test_unreadable_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "w.pt"
    if content == "list":
        torch.save([torch.zeros(1)], path)
    elif content == "nested":
        torch.save({"epoch": 3, "weights": {"a": torch.zeros(1)}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(BotError, match=message):
        read_checkpoint(path)


# ---- timm:NAME from the local Hugging Face cache -----------------------------------------------------------------
def fake_hub(root, repo_name: str, state: dict, config: dict | None = None):
    repo = root / f"models--timm--{repo_name}"
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snap.name)
    # as huggingface_hub lays a repo out: the snapshot's files are symlinks into blobs/
    (repo / "blobs").mkdir()
    blob = repo / "blobs" / "5f1e"
    save_file({k: v.contiguous() for k, v in state.items()}, str(blob))
    (snap / "model.safetensors").symlink_to(blob)
    if config is not None:
        (snap / "config.json").write_text(json.dumps(config))
    return snap / "model.safetensors"


def test_timm_name_from_the_local_cache(built, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    file = fake_hub(hub, "resnet18d.ra2_in1k", built["timm-resnet18d"].state_dict())
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ck = read_checkpoint("timm:resnet18d.ra2_in1k")
    assert (ck.arch, ck.variant, ck.origin, ck.name) == ("resnet18d", "D", "timm", "timm:resnet18d.ra2_in1k")
    assert ck.source == str(file.resolve()) and ck.sha256 == sha256_file(file)
    assert ck.mean == IMAGENET and ck.how["mean_std"] == "timm pretrained config of resnet18d.ra2_in1k" and not ck.notes
    # the same file by its path in the cache: timm's name and the repo's config.json (its own mean/std)
    (file.parent / "config.json").write_text(json.dumps(
        {"architecture": "resnet18d", "num_classes": 10, "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    by_path = read_checkpoint(file)
    assert (by_path.origin, by_path.name, by_path.mean, by_path.std) == ("timm", "timm:resnet18d.ra2_in1k", (0.5,) * 3, (0.25,) * 3)


@pytest.mark.parametrize("var", ["HF_HUB_CACHE", "HF_HOME"])
def test_timm_name_missing_from_the_cache_names_the_path(tmp_path, monkeypatch, var):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv(var, str(tmp_path / "cache"))
    hub = tmp_path / "cache" / ("hub" if var == "HF_HOME" else "")
    res = CliRunner().invoke(main, ["inspect", "timm:resnet50d.gluon_in1k"])
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and line.startswith("error: timm:resnet50d.gluon_in1k: not in the local Hugging Face cache")
    assert str(hub / "models--timm--resnet50d.gluon_in1k" / "snapshots" / "*" / "model.safetensors") in line
    assert "hf download timm/resnet50d.gluon_in1k model.safetensors" in line
    res = CliRunner().invoke(main, ["inspect", "timm:resnet50q.nope"])
    assert res.exit_code == 2 and "timm has no pretrained weights of that name" in res.output
    with pytest.raises(BotError, match="resnet50d.gluon_in1k: no such file or run directory; for timm's pretrained "
                                        "weights of that name write timm:resnet50d.gluon_in1k"):
        read_checkpoint("resnet50d.gluon_in1k")


# ---- bot inspect -------------------------------------------------------------------------------------------------
def test_inspect_text_and_json(built, tmp_path):
    path = write("ddp", built["timm-resnet26d"].state_dict(), tmp_path, "r26d")
    res = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    expected_params = sum(p.numel() for p in built["timm-resnet26d"].parameters())
    assert info["parameters"] == expected_params
    assert (info["arch"], info["variant"], info["num_classes"], info["origin"]) == ("resnet26d", "D", 10, "state-dict")
    assert info["inferred"]["arch"].startswith("tensors (Bottleneck blocks [2, 2, 2, 2])")
    assert info["dropped_as_backbone"] == ["fc.weight", "fc.bias"] and info["missing"] == []
    assert info["sha256"] == sha256_file(path)
    gluon = write("gluon", built["tv-resnet18"].state_dict(), tmp_path, "g18")
    res = CliRunner().invoke(main, ["inspect", str(gluon)])
    assert res.exit_code == 0, res.output
    assert "arch        resnet18  [tensors (BasicBlock blocks [2, 2, 2, 2])]" in res.output
    params = sum(p.numel() for p in built["tv-resnet18"].parameters())
    assert "20 BatchNorm counters filled with 0" in res.output and f"{params / 1e6:.2f} M ({params:,})" in res.output
    assert "ImageNet" in res.output
