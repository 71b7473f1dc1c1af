"""Evaluation under the run's autocast (engine.precision.eval_autocast): the network runs in bf16 on a CPU when the
run trained in bf16, while scores, boxes and counts stay fp32 or wider; fp32 runs (and fp16 ones on a CPU) stay fp32."""
import torch

from bot.engine.distributed import DistContext
from bot.engine.precision import eval_autocast

CPU = torch.device("cpu")


def test_eval_autocast_follows_the_run_on_cuda_and_only_bf16_on_a_cpu():
    x, w = torch.randn(2, 4), torch.randn(4, 3)
    for mode, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float32)):
        with eval_autocast(mode, CPU):
            assert (x @ w).dtype == dtype, mode
    if torch.cuda.is_available():
        for mode, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            with eval_autocast(mode, torch.device("cuda")):
                assert (x.cuda() @ w.cuda()).dtype == dtype


class DtypeConv(torch.nn.Module):
    """A segmenter (3x3 conv) that records the dtype its logits come out in."""

    def __init__(self, classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, classes, 3, padding=1)
        self.dtypes = set()

    def forward(self, x):
        out = self.conv(x)
        self.dtypes.add(out.dtype)
        return {"out": out}


class Source:
    num_classes, ignore_index = 4, 255


class Images(torch.utils.data.Dataset):
    """Items as SegDataset gives them: (normalised image, mask, index), two sizes."""

    source = Source()

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.items = [(torch.randn(3, h, w, generator=g), torch.randint(0, 4, (h, w), generator=g))
                      for h, w in ((20, 30), (24, 24), (16, 28))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return (*self.items[i], i)


def test_segmentation_evaluation_runs_under_bf16_autocast_and_counts_exactly():
    from bot.segmentation.evaluate import confusion

    ms = {"scales": [0.75, 1.25], "flip": True, "base_size": 24, "pad_value": [-2.0, -2.0, -1.8], "batch": 8}
    for mode in ("whole", "ms-flip"):
        matrices = {}
        for precision in ("fp32", "bf16"):
            model = DtypeConv()
            cm = confusion(model, Images(), DistContext(), batch_size=2, mode=mode, window=24, overlap=1 / 3, ms=ms,
                           precision=precision)
            assert model.dtypes == {torch.float32 if precision == "fp32" else torch.bfloat16}, (mode, precision)
            matrices[precision] = cm.matrix
        labelled = 20 * 30 + 24 * 24 + 16 * 28
        assert int(matrices["bf16"].sum()) == int(matrices["fp32"].sum()) == labelled  # int64 counts, every pixel once
        agree = int(matrices["bf16"].diag().sum() - matrices["fp32"].diag().sum())
        assert abs(agree) < 0.05 * labelled  # bf16 logits flip few argmaxes


def test_detection_predict_runs_under_bf16_autocast_and_decodes_boxes_in_fp32():
    from bot.detection.evaluate import predict
    from detect_helpers import tiny_detector

    model = tiny_detector()
    g = torch.Generator().manual_seed(1)
    images = [(torch.rand(3, 96, 128, generator=g), {"image_id": f"im{i}", "orig_size": (96, 128)}) for i in range(2)]
    seen = {}

    def record(name, pick):
        def hook(module, inputs, out):
            seen.setdefault(name, pick(out).dtype)  # returns None: the output stays as it was
        return hook

    model.backbone.register_forward_hook(record("features", lambda out: out["0"]))
    model.roi_heads.box_predictor.register_forward_hook(record("boxes", lambda out: out[1]))
    dets, _ = predict(model, images, DistContext(), batch_size=2, precision="bf16")
    assert seen == {"features": torch.bfloat16, "boxes": torch.float32}
    assert len(dets) > 20
    coords = torch.tensor([c for d in dets for c in d["box"]])
    inside = coords[(coords > 1) & (coords < 95)]  # not clipped to the border (0, 96 and 128 are exact in bf16)
    # decoded in bf16, every coordinate would be a bf16 number (steps of 0.25-0.5 px here); in fp32 almost none is
    assert inside.numel() > 20 and float((inside.bfloat16().float() == inside).float().mean()) < 0.2
    seen.clear()
    predict(model, images, DistContext(), batch_size=2, precision="fp32")
    assert seen == {"features": torch.float32, "boxes": torch.float32}


def test_pretrain_evaluation_goes_through_eval_autocast(tiny_imagefolder, tmp_path, monkeypatch):
    import bot.pretrain.train as pt

    calls = []

    def spy(mode, device):
        calls.append((mode, device.type))
        return eval_autocast(mode, device)

    monkeypatch.setattr(pt, "eval_autocast", spy)
    sets = ["train.batch_size=40", "data.workers=0", "train.epochs=1", "data.image_size=32"]
    cfg = pt.resolve_config("resnet50d", sets, data=str(tiny_imagefolder), arch="resnet18d", precision="bf16",
                            device="cpu")
    summary = pt.train(cfg, tmp_path / "run")
    assert calls and set(calls) == {("bf16", "cpu")}
    assert 0.0 <= summary["metrics"]["top1"] <= summary["metrics"]["top5"] <= 1.0
