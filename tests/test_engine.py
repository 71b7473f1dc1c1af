"""Engine pieces every stage leans on: samplers over ranks, config overrides, error lines, atomic writes."""
import json

import pytest
import torch

from bot.engine.config import apply_sets
from bot.engine.distributed import DistContext, EpochSampler, ShardSampler, sample_seed, seeded_sample
from bot.engine.errors import BotError, one_line
from bot.engine.rundir import RunDir, atomic_write_text


def test_epoch_sampler_shards_disjointly_and_resumes_mid_epoch():
    ranks = [EpochSampler(23, DistContext(rank=r, world_size=2), seed=1, batch_size=4) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(3)
    a, b = [i for _, i in ranks[0]], [i for _, i in ranks[1]]
    assert len(a) == len(b) == 8  # 11 per rank, cut to whole batches of 4
    assert not set(a) & set(b)
    assert all(e == 3 for e, _ in ranks[0])
    ranks[0].set_epoch(3, skip=4)
    assert [i for _, i in ranks[0]] == a[4:] and len(ranks[0]) == 4
    ranks[0].set_epoch(4)
    assert [i for _, i in ranks[0]] != a  # a new order each epoch


def test_seeded_sample_matches_manual_seed_and_restores_the_global_rng():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    with seeded_sample(7, 2, 5):
        inside = torch.rand(4)
    torch.manual_seed(sample_seed(7, 2, 5))
    assert torch.equal(inside, torch.rand(4))
    torch.manual_seed(123)
    with seeded_sample(7, 2, 5):
        torch.rand(100)
    assert torch.equal(torch.rand(3), before)


def test_shard_sampler_covers_each_sample_once():
    parts = [list(ShardSampler(10, DistContext(rank=r, world_size=3))) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(10))


def test_set_parses_yaml_values_and_refuses_unknown_keys():
    cfg = {"optim": {"lr": None, "milestones": [1]}, "train": {"amp": False}}
    apply_sets(cfg, ["optim.lr=0.1", "optim.milestones=[30, 60]", "train.amp=true"])
    assert cfg == {"optim": {"lr": 0.1, "milestones": [30, 60]}, "train": {"amp": True}}
    with pytest.raises(BotError, match="unknown key 'optim.lrr'"):
        apply_sets(cfg, ["optim.lrr=1"])
    with pytest.raises(BotError, match="expected key=value"):
        apply_sets(cfg, ["optim.lr"])


def test_one_line_digs_the_message_out_of_a_worker_traceback():
    wrapped = BotError("Caught BotError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                       '  File "x.py", line 1\nengine.errors.BotError: /d/cat/1.jpg: not a readable image')
    assert one_line(wrapped) == "/d/cat/1.jpg: not a readable image"
    assert one_line(BotError("plain")) == "plain"


def test_summary_requires_the_contract_keys_and_is_atomic(tmp_path):
    run = RunDir(tmp_path / "r")
    with pytest.raises(ValueError, match="summary lacks keys"):
        run.write_summary({"task": "pretrain"})
    assert not run.finished()
    atomic_write_text(tmp_path / "r" / "x.json", json.dumps({"a": 1}))
    assert json.loads((tmp_path / "r" / "x.json").read_text()) == {"a": 1}
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["x.json"]  # no temporary left behind
    disabled = RunDir(tmp_path / "other", enabled=False)
    disabled.log({"step": 1})
    assert not (tmp_path / "other").exists()
