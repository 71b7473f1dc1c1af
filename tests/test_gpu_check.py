"""benchmarks/gpu_check.py: its --smoke mode end to end (every section on a CPU, the JSON's content checked), the
pieces it is built from (the stages' configs, the sync counter, the foreach twin of a stage optimiser, the run
check) and the GPU table of docs/performance.md rendered from its JSON."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402
import results  # noqa: E402


def _run_dir(tmp_path, losses, summary=True):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": v}) + "\n" for i, v in enumerate(losses)))
    if summary:
        (run / "summary.json").write_text("{}")
    log = tmp_path / "log"
    log.write_text("line one\nerror: something broke\n")
    return run, log


@pytest.mark.parametrize("losses, summary, rc, ok, detail", [
    ([2.5, 2.1], True, 0, True, "2 finite losses, last 2.100"),
    ([2.5, math.nan], True, 0, False, "non-finite loss"),
    ([2.5, math.inf], True, 0, False, "non-finite loss"),
    ([], True, 0, False, "no losses logged"),
    ([2.5], False, 0, False, "no summary.json"),
    ([2.5], True, 2, False, "exit code 2: error: something broke"),
])
def test_a_stage_passes_only_when_it_exits_0_with_finite_losses_and_a_summary(tmp_path, losses, summary, rc, ok, detail):
    run, log = _run_dir(tmp_path, losses, summary)
    got_ok, got_detail = gpu_check.check_run(run, rc, log)
    assert got_ok is ok and detail in got_detail


@pytest.mark.parametrize("stage", gpu_check.STAGES)
def test_every_stage_is_configured_by_its_own_resolver_on_the_check_s_device(tmp_path, stage):
    data = gpu_check.data_paths(tmp_path)
    data.seg_small.mkdir(parents=True)
    _, cfg = gpu_check.stage_config(stage, gpu_check.FULL, data, "cuda", "fp16")
    assert cfg["train"]["precision"] == "fp16" and cfg["train"]["device"] == "cuda"
    if stage.startswith("detect"):
        assert cfg["model"]["detector"] == stage.split("-")[1]
        assert cfg["model"]["rpn_post_nms_top_n_train"] == 2000  # the paper's budget on the GPU, not synthetic.yaml's
    if stage == "pretrain":
        # the recipe's default workers, left for the stage to resolve (auto: from the cores per process on CUDA)
        assert cfg["model"]["arch"] == "resnet50d" and cfg["data"]["workers"] == "auto"


def test_the_sync_counter_counts_host_reads_between_start_and_stop():
    counter = gpu_check.SyncCounter(torch.device("cpu"), [])
    x = torch.arange(4.0)
    x.sum().item()                    # before start: not counted
    counter.start()
    x.sum().item()
    torch.tensor([1.0, 2.0])          # a tensor made from host values
    (x * 2).add_(1)                   # no host read
    got = counter.stop()
    x.sum().item()                    # after stop: not counted
    assert got["syncs"] == 2 and sum(got["where"].values()) == 2, got


def test_the_foreach_twin_keeps_the_stage_optimisers_groups_and_hyper_parameters():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD([{"params": [model.weight], "weight_decay": 1e-4, "lr_mult": 10.0},
                           {"params": [model.bias], "weight_decay": 0.0}], lr=0.1, momentum=0.9, nesterov=True,
                          fused=True)
    twin = gpu_check.foreach_twin(opt)
    assert type(twin) is torch.optim.SGD and twin.defaults["foreach"] is True and not twin.defaults["fused"]
    for a, b in zip(opt.param_groups, twin.param_groups):
        assert a["params"] == b["params"] and a["weight_decay"] == b["weight_decay"] and a["nesterov"] and b["nesterov"]
        assert a.get("lr_mult") == b.get("lr_mult") and a["momentum"] == b["momentum"] == 0.9


def _tiny_parts(fused: bool) -> dict:
    """What gpu_check reads of a stage's build, for a two-layer net with the paper's SGD on the CPU."""
    import copy
    from types import SimpleNamespace

    from bot.engine.distributed import DistContext
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, fused=fused)
    return {"model": model, "optimizer": opt, "init": copy.deepcopy(model.state_dict()), "optimizer_attrs": set(vars(opt)),
            "train_step": lambda b: (torch.nn.functional.cross_entropy(model(b[0]), b[1]), 8, {}),
            "session": SimpleNamespace(ctx=DistContext(), seed=0)}


@pytest.mark.parametrize("fixed", [True, False])
def test_the_overflow_check_tells_fused_sgd_with_unset_momentum_from_foreach(monkeypatch, fixed):
    import bot.engine.precision as precision
    if not fixed:  # engine/precision.py before the fix: fused SGD's buffers left as empty_like memory
        monkeypatch.setattr(precision, "zero_momentum_buffers", lambda optimizer: None)
    parts = _tiny_parts(fused=True)
    batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    reference, _ = gpu_check.overflow_run(parts, batch, gpu_check.foreach_twin(parts["optimizer"]))
    for _ in range(2):  # twice: the second run starts from the optimiser as built (no state, no flag left)
        own, scale = gpu_check.overflow_run(parts, batch, parts["optimizer"])
        row = gpu_check.compare_to_foreach(own, reference)
        assert row["ok"] is fixed and scale < 65536, row


def test_failures_and_skips_are_found_anywhere_in_the_results():
    out = {"a": {"x": {"ok": True}, "y": {"ok": False, "z": gpu_check.SKIPPED}}, "b": gpu_check.SKIPPED}
    assert gpu_check.failures(out) == ["a/y"] and gpu_check.skipped(out) == ["a/y/z", "b"]


@pytest.mark.gpu_check
def test_smoke_mode_runs_every_section_on_a_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--smoke", "--json", str(out),
                           "--out", str(tmp_path / "work")], capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    check_smoke_results(out)


def check_smoke_results(out: Path) -> None:
    """What a --smoke run's JSON must hold (also run by hand on a kept file: python -c 'import ...')."""
    data = json.loads(out.read_text())
    meta = data["meta"]
    assert set(gpu_check.SECTIONS) <= set(data) and meta["failed"] == [] and meta["smoke"]
    # (a) every stage in fp32 and bf16 within tolerance of the CPU fp32 reference, fp16 where the smoke runs it
    c = data["correctness"]
    for stage in gpu_check.STAGES:
        for p in gpu_check.PRECISIONS:
            row = c["stages"][stage][p]
            if p == "fp16" and stage not in gpu_check.SMOKE.fp16_stages:
                assert row == gpu_check.SLOW_FP16
                continue
            assert row["ok"] and row["skipped_steps"] == 0, (stage, p, row)
            assert all(row[k] <= row["tolerance"][k] for k in ("loss", "grad_norm", "weight_change")), (stage, p, row)
        assert c["stages"][stage]["fp32"]["loss"] < 1e-6   # the same device as the reference in the smoke
    assert c["device_pipeline"]["ok"] and c["device_pipeline"]["max_abs_diff"] <= gpu_check.PIPELINE_TOLERANCE
    dali = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
    if dali:
        assert sorted(c["dali"]) == ["color_jitter 0.0", "color_jitter 0.4"]
        assert all(r["ok"] and r["same_draws"] and r["backend"] == "cpu" for r in c["dali"].values())
    # (b) the forced overflow: finite weights, equal to foreach SGD
    for stage, row in data["overflow"].items():
        if stage in gpu_check.SMOKE.fp16_stages:
            assert row["finite"] and row["ok"] and row["rel_diff_to_foreach"] <= 1e-6 and row["scale_after"] < 65536
            assert row["cuda_options_on_cpu"]["ok"] and "fused" in row["cuda_options_on_cpu"]["optimizer_options"]
        else:
            assert row == gpu_check.SLOW_FP16
    # (c) syncs counted per stage over 10 steps and one evaluation, each stage's run finished
    for stage in gpu_check.STAGES:
        row = data["sync_audit"][stage]
        assert row["run_ok"] and row["train"]["steps"] == 10 and row["train"]["syncs"] >= 0, row
        assert isinstance(row["evaluation"]["syncs"], int)
    # (d) evaluation timed on 30 images; peak GPU memory is what a CPU cannot show
    assert sorted(data["evaluation"]) == ["detect-c4 predict + scoring", "detect-fpn predict + scoring",
                                          "segment ms-flip", "segment whole"]
    assert all(r["images"] == 30 and r["seconds"] > 0 for r in data["evaluation"].values())
    # (e) three loaders over >= 100 batches; (f) their ratios to bot's step and the loop ratios, 3 rounds
    assert len(data["loaders"]) == 2 + int(dali)
    assert all(r["batches"] >= 100 and r["images_per_second"] > 0 for r in data["loaders"].values())
    entries = {k: v for k, v in data.items() if isinstance(v, dict) and "ratio" in v}
    assert sum(": bot loop / bare loop" in k for k in entries) == 4 and sum("/ bot step" in k for k in entries) == 2 + int(dali)
    assert all(e["rounds"] == 3 and e["baseline"] > 0 and e["bot"] > 0 for e in entries.values())
    assert data["throughput"]["compile"]["backend"] == "eager"
    # (g) 2 gloo ranks per stage, stopped mid-run and resumed to the end
    for stage in gpu_check.STAGES:
        row = data["ranks"][stage]
        assert row["ok"] and row["resumed"] and 0 < row["steps_before_stop"] < row["steps_logged"], row
    # what only CUDA can show, and nothing else, says so
    assert meta["skipped"] == [f"evaluation/{n}/peak_memory_gib" for n in data["evaluation"]]
    table = results.render_gpu(str(out))
    assert "(a) correctness vs CPU fp32" in table and "(g) 2 ranks" in table and "**FAIL**" not in table
    assert table.count(": bot loop / bare loop") == 4


def test_the_tables_are_rendered_between_their_markers(tmp_path):
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps({"x img/s": results.entry(200.0, 250.0, "img/s", "stock", 3)}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{results.START}\nold table\n{results.END}\nmid\n{results.GPU_START}\nold\n"
                      f"{results.GPU_END}\nafter\n")
    results.replace_table(readme, results.render([str(bench)]))
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and f"{results.END}\nmid\n" in text
    assert "| x img/s | 200 | 250 | **1.25** | img/s | stock |" in text
    results.replace_table(readme, "gpu rows", results.GPU_START, results.GPU_END)
    assert f"{results.GPU_START}\ngpu rows\n{results.GPU_END}\nafter\n" in readme.read_text()
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="needs the marker lines"):
        results.replace_table(readme, "table")
