"""GluonCV's multi-scale + flip evaluation (batched) against a window-by-window transcription of its rule and hand
computations, and the all-class ADE20K mean."""
import math

import pytest
import torch
import torch.nn.functional as F

from bot.segmentation.evaluate import ms_options, predict_labels
from bot.segmentation.metrics import ConfusionMatrix
from bot.segmentation.multiscale import ms_flip_scores, resized_shape


class Toy(torch.nn.Module):
    """A 3x3 conv with fixed, left-right asymmetric weights: flipping and rescaling both change its output."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-1, 1, self.conv.weight.numel()).reshape(self.conv.weight.shape))
            self.conv.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))

    def forward(self, x):
        return {"out": self.conv(x)}


class Counting(torch.nn.Module):
    """Wraps a model and counts its forward passes and the inputs they carried."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls, self.inputs = model, 0, 0

    def forward(self, x):
        self.calls += 1
        self.inputs += x.shape[0]
        return self.model(x)


def gluoncv_reference(model, image, scales, base_size, crop, pad_value, flip=True):
    """GluonCV's MultiEvalModel.__call__ (gluoncv/model_zoo/segbase.py at 428ee05d), written out plainly: one window
    (and one flipped window) per forward pass."""
    _, _, h, w = image.shape
    stride = int(crop * 2 / 3)
    pad = torch.tensor(pad_value)[None, :, None, None]

    def pad_image(x):
        ph, pw = max(crop, x.shape[2]), max(crop, x.shape[3])
        out = pad.expand(1, 3, ph, pw).clone()
        out[:, :, :x.shape[2], :x.shape[3]] = x
        return out

    def flip_inference(x):
        out = model(x)["out"]
        if flip:
            out = out + model(x.flip(3))["out"].flip(3)
        return out.double().exp()

    scores = torch.zeros(1, 4, h, w, dtype=torch.float64)
    for scale in scales:
        long_size = math.ceil(base_size * scale)
        if h > w:
            height, width = long_size, int(w * long_size / h + 0.5)
        else:
            height, width = int(h * long_size / w + 0.5), long_size
        cur = F.interpolate(image, size=(height, width), mode="bilinear", align_corners=True)
        if long_size <= crop:
            outputs = flip_inference(pad_image(cur))[:, :, :height, :width]
        else:
            padded = pad_image(cur) if min(height, width) < crop else cur
            ph, pw = padded.shape[2:]
            outputs = torch.zeros(1, 4, ph, pw, dtype=torch.float64)
            count = torch.zeros(1, 1, ph, pw, dtype=torch.float64)
            for idh in range(math.ceil((ph - crop) / stride) + 1):
                for idw in range(math.ceil((pw - crop) / stride) + 1):
                    h0, w0 = idh * stride, idw * stride
                    h1, w1 = min(h0 + crop, ph), min(w0 + crop, pw)
                    out = flip_inference(pad_image(padded[:, :, h0:h1, w0:w1]))
                    outputs[:, :, h0:h1, w0:w1] += out[:, :, :h1 - h0, :w1 - w0]
                    count[:, :, h0:h1, w0:w1] += 1
            outputs = (outputs / count)[:, :, :height, :width]
        scores += F.interpolate(outputs, size=(h, w), mode="bilinear", align_corners=True)
    return scores


PAD = [-2.1, -2.0, -1.8]  # a black pixel under ImageNet's mean/std


def test_batched_ms_flip_equals_gluoncv_window_by_window_in_fewer_forward_passes():
    torch.manual_seed(0)
    image = torch.randn(1, 3, 20, 30)
    # base 30, crop 24: long sides 15 and 23 are padded to 24 x 24 whole; 30 and 45 slide (stride 16) with windows
    # cut at the edge and padded again, the short side of 45 x 30 padded only where it is below 24
    scales = [0.5, 0.75, 1.0, 1.5]
    reference_model, batched_model = Counting(Toy()), Counting(Toy())
    expected = gluoncv_reference(reference_model, image, scales, 30, 24, PAD)
    got = ms_flip_scores(batched_model, image, scales=scales, flip=True, base_size=30, window=24, overlap=1 / 3,
                         pad_value=PAD, batch=8)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    windows = 1 + 1 + 2 + 2 * 3  # 24 x 24 (1), 24 x 24 (1), 20 x 30 -> 24 x 30 (1 x 2), 30 x 45 (2 x 3)
    assert reference_model.calls == 2 * windows
    assert batched_model.calls == math.ceil(windows / 4) and batched_model.inputs == 2 * windows
    plain = ms_flip_scores(Toy(), image, scales=scales, flip=False, base_size=30, window=24, pad_value=PAD, batch=8)
    torch.testing.assert_close(plain, gluoncv_reference(Toy(), image, scales, 30, 24, PAD, flip=False), rtol=1e-5, atol=0)


def test_scores_are_exp_of_logits_plus_flipped_logits_summed_over_scales():
    def pointwise(x):  # flip-symmetric and blind to padding: each scale's score is exp(2 f(resized image))
        return {"out": torch.cat([x[:, :1] * 2, x[:, 1:2] - x[:, 2:3]], 1)}

    torch.manual_seed(1)
    image = torch.randn(1, 3, 16, 16) * 0.5
    got = ms_flip_scores(pointwise, image, scales=[1.0, 2.0], flip=True, base_size=16, window=100, pad_value=PAD)
    expected = torch.zeros(1, 2, 16, 16, dtype=torch.float64)
    for side in (16, 32):
        x = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=True)
        score = (2 * pointwise(x)["out"]).double().exp()
        expected += F.interpolate(score, size=(16, 16), mode="bilinear", align_corners=True)
    torch.testing.assert_close(got, expected)
    assert float(got[0, :, 3, 3].sum()) > 2.5  # a sum of unnormalised exp scores, not a mean of probabilities


def test_large_scales_slide_and_match_whole_image_for_a_pointwise_model():
    def pointwise(x):
        return {"out": torch.cat([x[:, :1] * 2, x[:, 1:2] - x[:, 2:3]], 1)}

    image = torch.randn(1, 3, 24, 40)
    slid = ms_flip_scores(pointwise, image, scales=[1.0, 2.0], flip=True, base_size=40, window=32)  # 80 px > window
    whole = ms_flip_scores(pointwise, image, scales=[1.0, 2.0], flip=True, base_size=40, window=1000)
    torch.testing.assert_close(slid, whole)
    assert resized_shape(24, 40, 80) == (48, 80) and resized_shape(40, 24, 10) == (10, 6)


def test_predict_labels_scores_each_image_of_a_padded_batch_at_its_own_size_in_shared_passes():
    torch.manual_seed(0)
    a, b = torch.randn(3, 20, 30), torch.randn(3, 12, 18)
    batch = torch.zeros(2, 3, 32, 32)
    batch[0, :, :20, :30], batch[1, :, :12, :18] = a, b
    ms = {"scales": [0.75, 1.25], "flip": True, "base_size": 24, "pad_value": PAD, "batch": 16}
    model = Counting(Toy())
    pred = predict_labels(model, batch, [(20, 30), (12, 18)], "ms-flip", 24, 1 / 3, ms)
    assert pred.shape == (2, 32, 32)
    # windows: a at 18 x 12 -> 1 (padded), 30 x 20 -> 2; b at 18 x 12 -> 1, 30 x 20 -> 2: 6 windows, 8 per pass
    assert model.calls == 1 and model.inputs == 12
    for i, (x, (h, w)) in enumerate([(a, (20, 30)), (b, (12, 18))]):
        alone = ms_flip_scores(Toy(), x[None], window=24, **ms).argmax(1)[0]
        assert torch.equal(pred[i, :h, :w], alone)
    assert int(pred[1, 12:].abs().sum()) == 0


def test_ms_options_fill_missing_keys_from_the_defaults():
    cfg = {"eval": {"mode": "ms-flip"}, "data": {"base_size": 520}}
    options = ms_options(cfg)
    assert options.pop("pad_value") == pytest.approx([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225])
    assert options == {"scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "flip": True, "base_size": 520, "batch": 16}
    cfg["model"] = {"normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]}}
    assert ms_options(cfg)["pad_value"] == [-2.0, -1.0, -0.5]  # the run's own black pixel


def test_miou_all_counts_every_class():
    cm = ConfusionMatrix(4, ignore_index=255)
    target = torch.tensor([0, 0, 1, 1, 255])
    pred = torch.tensor([0, 1, 1, 1, 2])
    cm.update(pred, target)
    r = cm.compute()
    # class 0: TP 1, union 2 -> 1/2; class 1: TP 2, union 3 -> 2/3; classes 2 and 3: absent (the 2 was on ignore)
    assert r["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert r["miou_all"] == pytest.approx((1 / 2 + 2 / 3) / 4)
