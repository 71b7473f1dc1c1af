"""GluonCV-style multi-scale + flip evaluation against hand computations, and the all-class ADE20K mean."""
import math

import pytest
import torch
import torch.nn.functional as F

from bot.segmentation.evaluate import ms_options, predict_labels
from bot.segmentation.metrics import ConfusionMatrix
from bot.segmentation.multiscale import ms_flip_probs, resized_shape


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


def test_ms_flip_is_the_mean_of_upsampled_flip_averaged_softmax_scores():
    torch.manual_seed(0)
    model, image = Toy(), torch.randn(1, 3, 20, 30)
    scales = [0.5, 1.0, 1.5]
    got = ms_flip_probs(model, image, scales=scales, flip=True, base_size=30, window=64)
    expected = torch.zeros(1, 4, 20, 30)
    for s, (h, w) in zip(scales, [(10, 15), (20, 30), (30, 45)]):  # long side ceil(30 s), aspect 2:3 kept
        x = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False)
        p = model.conv(x).softmax(1)
        pf = model.conv(x.flip(3)).softmax(1).flip(3)
        expected += F.interpolate((p + pf) / 2, size=(20, 30), mode="bilinear", align_corners=False) / 3
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.sum(1), torch.ones(1, 20, 30))


def test_scores_are_averaged_as_probabilities_not_logits():
    # a model whose logits depend only on the input's height: class 0 gets h/10, class 1 gets 0
    def by_height(x):
        return {"out": torch.stack([torch.full(x.shape[-2:], x.shape[-2] / 10), torch.zeros(x.shape[-2:])])[None]}

    image = torch.zeros(1, 3, 16, 16)
    p = ms_flip_probs(by_height, image, scales=[1.0, 2.0], flip=False, base_size=32, window=100)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731  softmax of (v, 0)
    assert float(p[0, 0, 5, 5]) == pytest.approx((sig(3.2) + sig(6.4)) / 2, abs=1e-6)  # long sides 32 and 64
    assert float(p[0, 0, 5, 5]) != pytest.approx(sig(4.8), abs=1e-3)


def test_large_scales_slide_and_match_whole_image_for_a_pointwise_model():
    def pointwise(x):
        return {"out": torch.cat([x[:, :1] * 2, x[:, 1:2] - x[:, 2:3]], 1)}

    image = torch.randn(1, 3, 24, 40)
    slid = ms_flip_probs(pointwise, image, scales=[1.0, 2.0], flip=True, base_size=40, window=32)  # 80 px > window
    whole = ms_flip_probs(pointwise, image, scales=[1.0, 2.0], flip=True, base_size=40, window=1000)
    torch.testing.assert_close(slid, whole)
    assert resized_shape(24, 40, 80) == (48, 80) and resized_shape(40, 24, 10) == (10, 6)


def test_predict_labels_scores_each_image_of_a_padded_batch_at_its_own_size():
    torch.manual_seed(0)
    model = Toy()
    a, b = torch.randn(3, 20, 30), torch.randn(3, 12, 18)
    batch = torch.zeros(2, 3, 32, 32)
    batch[0, :, :20, :30], batch[1, :, :12, :18] = a, b
    ms = {"scales": [0.75, 1.25], "flip": True, "base_size": 24}
    pred = predict_labels(model, batch, [(20, 30), (12, 18)], "ms-flip", 64, 1 / 3, ms)
    assert pred.shape == (2, 32, 32)
    alone = ms_flip_probs(model, b[None], window=64, **ms).argmax(1)[0]
    assert torch.equal(pred[1, :12, :18], alone)
    assert int(pred[1, 12:].abs().sum()) == 0


def test_ms_options_fill_missing_keys_from_the_defaults():
    cfg = {"eval": {"mode": "ms-flip"}, "data": {"base_size": 520}}
    assert ms_options(cfg) == {"scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "flip": True, "base_size": 520}


def test_miou_all_counts_every_class():
    cm = ConfusionMatrix(4, ignore_index=255)
    target = torch.tensor([0, 0, 1, 1, 255])
    pred = torch.tensor([0, 1, 1, 1, 2])
    cm.update(pred, target)
    r = cm.compute()
    # class 0: TP 1, union 2 -> 1/2; class 1: TP 2, union 3 -> 2/3; classes 2 and 3: absent (the 2 was on ignore)
    assert r["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert r["miou_all"] == pytest.approx((1 / 2 + 2 / 3) / 4)
