"""benchmarks/gpu_check.py: its --smoke mode end to end (the stages as processes, the measurements in-process, the
--json file), its pass/fail rule for a stage run, and the docs/performance.md table rendered from its JSON."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_every_stage_runs_under_each_precision_as_a_bot_command(tmp_path):
    commands = gpu_check.stage_commands(gpu_check.FULL, tmp_path / "data", tmp_path)
    assert sorted(commands) == sorted(f"{s} {p}" for s in ("pretrain", "finetune-detect", "finetune-seg")
                                      for p in ("fp16", "bf16"))
    for name, args in commands.items():
        assert args[0] == name.split()[0] and args[args.index("--precision") + 1] == name.split()[1]
        assert args[args.index("--device") + 1] == "cuda"


@pytest.mark.gpu_check
def test_smoke_mode_end_to_end(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--smoke", "--json", str(out),
                           "--out", str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    checks = data.pop("checks")
    assert sorted(checks) == ["stage finetune-detect fp32", "stage finetune-seg fp32", "stage pretrain fp32"]
    assert all(c["ok"] for c in checks.values()), checks
    names = list(data)
    assert sum("bot step / bare loop" in n for n in names) == 2          # eager and compiled
    assert sum(": from JPEGs / GPU-resident" in n for n in names) == 2
    dali = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
    assert sum("DALI from JPEGs / GPU-resident" in n for n in names) == int(dali)   # --loader dali, when installed
    assert any(n.startswith("Faster R-CNN") for n in names) and any(n.startswith("FCN") for n in names)
    for name, e in data.items():
        assert e["baseline"] > 0 and e["bot"] > 0 and e["unit"], name
        assert e["ratio"] == pytest.approx(e["bot"] / e["baseline"]), name
    table = results.render([str(out)])
    assert table.count("\n") == len(data) + 1   # header, rule, one row per measurement (the checks are not rows)
    assert "| img/s |" in table and "gpu_check.py --smoke" in table


def test_the_readme_table_is_rendered_between_its_markers(tmp_path):
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps({"x img/s": results.entry(200.0, 250.0, "img/s", "stock", 3)}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{results.START}\nold table\n{results.END}\nafter\n")
    results.replace_table(readme, results.render([str(bench)]))
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith(f"{results.END}\nafter\n")
    assert "| x img/s | 200 | 250 | **1.25** | img/s | stock |" in text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="needs the marker lines"):
        results.replace_table(readme, "table")
