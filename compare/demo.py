"""`bot demo`: the whole flow on the synthetic shapes world, at a scale that fits 10 minutes on 2 CPU cores.

For each recipe: `bot pretrain`, then `bot finetune-detect` and `bot finetune-seg` on its weights, each in its own
process (`python -P -m bot.cli ...`), exactly as a user would run them; then the comparison table and plot. Layout:
`OUT/pretrain/<recipe>`, `OUT/detect/<recipe>`, `OUT/segment/<recipe>`, `OUT/compare.{png,md,csv,json}`; with
`--seeds N`, seeds 1..N-1 of every run in a `seed<k>` folder inside seed 0's (`OUT/pretrain/<recipe>/seed1`, ...),
each stage given `--seed k` (seed 0 is the stages' default, so a demo folder from before --seeds stays valid).
Re-running skips finished runs (summary.json) and resumes interrupted ones (last.ckpt): every stage runs with
`--resume auto`, so its command line is the same for the first start and every restart.
"""
from __future__ import annotations

import functools
import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from bot.engine.errors import BotError
from bot.engine.launch import bot_argv, child_env

from .live import LiveView

DEFAULT_RECIPES = "resnet50b-standard,resnet50d"  # the first two rows of the paper's ladder (Tables 8 and 9)
# Demo scale, chosen to finish under 10 minutes on a quiet 2-core machine with both stage runs side by side
# (measured 7.6 minutes, docs/compare.md, "The demo"): the recipe's ResNet variant at depth 10 (one block per stage; 1.6x the
# images/s of depth 18 and the same top-1 per epoch here), 10 pretrain epochs per 120 of the recipe's (mixup's
# 200 -> 17), detection 6 of its 8 synthetic epochs, segmentation 12 epochs at batch 8 (more steps than 20 at
# batch 16 in fewer images; after 8 epochs at batch 16 both segmenters still predicted almost only background).
DEMO_DEPTH = 10
DEMO_PRETRAIN_EPOCHS = 10  # per 120 epochs of the recipe
DEMO_ARGS = {
    "pretrain": [],
    "finetune-detect": ["--epochs", "6"],
    "finetune-seg": ["--epochs", "12", "--batch-size", "8"],
}
STAGE_DIRS = {"pretrain": "pretrain", "finetune-detect": "detect", "finetune-seg": "segment"}
# Short names for the `+trick` form of --recipes: "+label-smoothing" after "resnet50d" means "resnet50d-ls".
TRICK_ALIASES = {"label-smoothing": "ls", "labelsmoothing": "ls", "smoothing": "ls", "cos": "cosine"}

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

console = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Step:
    stage: str                 # a bot command: pretrain | finetune-detect | finetune-seg
    recipe: str
    out: Path
    args: list[str] = field(default_factory=list)   # everything but --out and --resume auto
    seed: int = 0                                   # --seeds: which seed of the row this run is

    def argv(self) -> list[str]:
        """One command line for a first start and every restart: the stage starts the run, continues it (its options
        equal the run's own config.yaml, so they are accepted), or reports it finished."""
        return [*bot_argv(), self.stage, *self.args, "--out", str(self.out), "--resume", "auto"]

    def state(self) -> str:
        if (self.out / "summary.json").exists():
            return "finished"
        return "resume" if (self.out / "last.ckpt").exists() else "start"


def split_args(flag: str, text: str | None) -> list[str]:
    """A quoted option string into arguments, as a shell would; one line when its quotes do not close."""
    try:
        return shlex.split(text or "")
    except ValueError as e:
        raise BotError(f"{flag} {text!r}: {e} (quote it as you would in a shell)") from None


@functools.lru_cache(maxsize=None)
def catalogue(files: tuple[str, ...] = ()) -> dict[str, dict]:
    """The recipes as `bot recipes --json` describes them: compare asks the stage, it does not import it."""
    proc = subprocess.run([*bot_argv(), "recipes", "--json", *files], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BotError((proc.stderr.strip().splitlines() or ["bot recipes failed"])[-1].removeprefix("error: "))
    return {row["name"]: row for row in json.loads(proc.stdout)}


def is_checkpoint_row(token: str) -> bool:
    """A --recipes entry that is weights to fine-tune as they are (no pretrain): timm:NAME, a weights file, a run dir."""
    return token.startswith("timm:") or Path(token).suffix in CHECKPOINT_SUFFIXES or Path(token).is_dir()


def row_name(token: str) -> str:
    """What `bot compare` calls the row: the recipe's or file's stem, a run dir's name, or timm:NAME as given."""
    return token if token.startswith("timm:") else Path(token.rstrip("/")).name if Path(token).is_dir() else Path(token).stem


def resolve_recipes(text: str) -> list[str]:
    """`baseline,resnet50d,+cosine,+label-smoothing` -> recipe names; `+x` extends the last plain name: `resnet50d-x`.
    Checkpoints (timm:NAME, a .safetensors/.pth/... file, a pretrain run dir) are rows of their own, not pretrained."""
    known = list(catalogue())
    names, anchor = [], None
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if is_checkpoint_row(token):
            if token in names:
                raise BotError(f"--recipes: {token!r} is listed twice")
            names.append(token)
            anchor = None
            continue
        if token.startswith("+"):
            if anchor is None:
                raise BotError(f"--recipes {text}: {token!r} needs a recipe before it to extend")
            trick = token[1:].lower()
            name = f"{anchor}-{TRICK_ALIASES.get(trick, trick)}"
        else:
            name = anchor = token
        if name not in known and not Path(name).is_file():
            raise BotError(f"--recipes: unknown recipe {name!r} (from {token!r}); known: {', '.join(known)}")
        if name in names:
            raise BotError(f"--recipes: {name!r} is listed twice")
        names.append(name)
    if not names:
        raise BotError("--recipes: give at least one recipe")
    return names


def recipe_info(recipe: str) -> dict:
    known = catalogue()
    return known[recipe] if recipe in known else catalogue((recipe,))[recipe]


def demo_epochs(recipe: str) -> int:
    """The recipe's epochs at demo scale, in its ratio to the paper's 120 (mixup's 200 -> 5/3 of the others)."""
    info = recipe_info(recipe)
    return max(1, round(DEMO_PRETRAIN_EPOCHS * info["epochs"] / info["reference_epochs"]))


def demo_arch(recipe: str, depth: int) -> str:
    """The recipe's ResNet variant (A/B/C/D) at the demo's depth: baseline (resnet50a) -> resnet10a."""
    return f"resnet{depth}{recipe_info(recipe)['variant'].lower()}"


def seed_variants(seeds: int) -> list[tuple[int, str, list[str]]]:
    """(seed, sub-folder, extra arguments) per seed: seed 0 keeps the folders and the stages' default seed (0)."""
    if seeds < 1:
        raise BotError(f"--seeds {seeds}: give at least 1")
    return [(0, "", [])] + [(k, f"seed{k}", ["--seed", str(k)]) for k in range(1, seeds)]


def seed_dir(folder: Path, sub: str) -> Path:
    return folder / sub if sub else folder


def plan(recipes: list[str], out: Path, *, depth: int = DEMO_DEPTH, teacher: str | None = None,
         extra: dict[str, list[str]] | None = None, seeds: int = 1) -> list[Step]:
    """Every run, seed 0 of every recipe first (a whole comparison early), then each further seed."""
    extra = extra or {}
    steps = []
    for seed, sub, seed_args in seed_variants(seeds):
        for recipe in recipes:
            name = row_name(recipe)
            if is_checkpoint_row(recipe):
                for stage in ("finetune-detect", "finetune-seg"):
                    steps.append(Step(stage, name, seed_dir(out / STAGE_DIRS[stage] / name.replace(":", "-"), sub),
                                      ["--backbone", recipe, *DEMO_ARGS[stage], *seed_args, *extra.get(stage, [])],
                                      seed))
                continue
            pre = seed_dir(out / "pretrain" / name, sub)
            args = ["--recipe", recipe, "--arch", demo_arch(recipe, depth), "--epochs", str(demo_epochs(recipe)),
                    *DEMO_ARGS["pretrain"], *seed_args]
            if "teacher" in recipe_info(recipe)["requires"]:
                if not teacher:
                    raise BotError(f"--recipes: {recipe!r} distils from a teacher; give --teacher RUN_DIR|FILE.safetensors "
                                   f"(a demo-scale teacher: bot pretrain --recipe resnet152d-teacher --arch resnet34d "
                                   f"--epochs {demo_epochs('resnet152d-teacher')} --out runs/demo-teacher; "
                                   f"then add --teacher runs/demo-teacher)")
                args += ["--teacher", str(teacher)]
            steps.append(Step("pretrain", name, pre, args + list(extra.get("pretrain", [])), seed))
            for stage in ("finetune-detect", "finetune-seg"):
                steps.append(Step(stage, name, seed_dir(out / STAGE_DIRS[stage] / name, sub),
                                  ["--backbone", str(pre), *DEMO_ARGS[stage], *seed_args, *extra.get(stage, [])], seed))
    return steps


def run_subprocess(argv: list[str], log: Path | None = None, threads: int | None = None) -> int:
    """Run one stage command; with `log`, its output goes to that file (parallel runs would interleave on a terminal)."""
    env = dict(os.environ, **child_env())  # the stage stops (SIGTERM: it saves its resume state) if we die
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if log is None:
        return subprocess.run(argv, env=env).returncode
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        return subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env).returncode


def dependencies(steps: list[Step]) -> dict[int, set[int]]:
    """Step i waits for every earlier step whose run directory its arguments name (its --backbone or --teacher)."""
    deps = {}
    for i, step in enumerate(steps):
        args = set(step.args)
        deps[i] = {j for j, other in enumerate(steps[:i]) if str(other.out) in args}
    return deps


def command_line(command: str, options: dict, defaults: dict) -> str:
    """`bot COMMAND --flag value ...` for the options that differ from `defaults`, quoted for a POSIX shell: what a
    message prints for the user to paste (the same run again)."""
    argv = ["bot", command]
    for name, value in options.items():
        if value is None or value == defaults.get(name) or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return shlex.join(argv)


def run_steps(steps: list[Step], runner=run_subprocess, jobs: int = 1, view: LiveView | None = None,
              again: str = "bot demo") -> list[tuple[Step, str, float]]:
    """Run each step that is not finished, up to `jobs` at once (each when the runs it loads are done), each with
    its output in a log file beside its run directory, shown in one live view (compare/live.py); stop starting new
    ones at the first failure and raise a BotError naming the run and `again`, the command that resumes it all."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    deps = dependencies(steps)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    results: dict[int, tuple[Step, str, float]] = {}
    failed: list[str] = []
    view = view or LiveView(console)
    entries = [view.add(step.stage, step.recipe + (f" seed {step.seed}" if step.seed else ""), step.out,
                        step.out.parent / f"{step.out.name}.log") for step in steps]

    def run_one(i: int) -> None:
        step, entry = steps[i], entries[i]
        state = step.state()
        if state == "finished":
            view.finished(entry, "skipped")
            results[i] = (step, "skipped", 0.0)
            return
        argv = step.argv()
        log = entry.log
        view.started(entry)
        view.say(f"  $ bot {shlex.join(argv[len(bot_argv()):])}" + ("  (resuming from last.ckpt)" if state == "resume" else ""))
        t0 = time.time()
        code = runner(argv, log, threads)
        seconds = time.time() - t0
        if code != 0 or not (step.out / "summary.json").exists():
            hint = "interrupted" if code in (130, -2) else f"failed (exit code {code})"
            tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-3:] if log.exists() else []
            view.finished(entry, "failed", seconds, why=f"{hint}; see {log}")
            for line in tail:
                view.say(f"  | {line}")
            failed.append(f"{step.out}: `bot {step.stage}` {hint}; see {log}. "
                          f"To resume (finished runs are skipped): {again}")
            return
        view.finished(entry, "done", seconds)
        results[i] = (step, "resumed" if state == "resume" else "ran", seconds)

    pending = set(range(len(steps)))
    with view, ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        running: dict = {}
        while (pending or running) and not (failed and not running):
            for i in sorted(pending):
                if len(running) >= jobs or failed:
                    break
                if deps[i] <= set(results):
                    pending.discard(i)
                    running[pool.submit(run_one, i)] = i
            if not running:
                break
            finished, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
            view.refresh()
            for future in finished:
                running.pop(future)
                future.result()
    if failed:
        raise BotError(failed[0])
    return [results[i] for i in sorted(results)]


def run_demo(*, recipes: str = DEFAULT_RECIPES, out: str | Path = "runs/demo", depth: int = DEMO_DEPTH,
             teacher: str | None = None, pretrain_args: str = "", detect_args: str = "", segment_args: str = "",
             baseline: str | None = None, runner=run_subprocess, jobs: int | None = None, seeds: int = 1) -> Path:
    from .command import run_compare

    out = Path(out)
    names = resolve_recipes(recipes)
    extra = {"pretrain": split_args("--pretrain-args", pretrain_args), "finetune-detect": split_args("--detect-args", detect_args),
             "finetune-seg": split_args("--segment-args", segment_args)}
    steps = plan(names, out, depth=depth, teacher=teacher, extra=extra, seeds=seeds)
    t0 = time.time()
    console.print(f"[bold]bot demo[/]: {len(names)} recipes ({', '.join(names)}) x pretrain, detection, "
                  f"segmentation{f' x {seeds} seeds' if seeds > 1 else ''} -> {out}")
    again = command_line("demo", {"out": out, "recipes": recipes, "depth": depth, "teacher": teacher,
                                  "pretrain_args": pretrain_args, "detect_args": detect_args,
                                  "segment_args": segment_args, "baseline": baseline, "jobs": jobs, "seeds": seeds},
                         {"recipes": DEFAULT_RECIPES, "depth": DEMO_DEPTH, "pretrain_args": "", "detect_args": "",
                          "segment_args": "", "seeds": 1})
    jobs = jobs or min(2, os.cpu_count() or 1)
    done = run_steps(steps, runner, jobs, again=again)
    times = ", ".join(f"{s.stage} {s.recipe} {sec:.0f} s" for s, how, sec in done if how != "skipped")
    console.print(f"[bold]all runs finished[/] in {time.time() - t0:.0f} s" + (f" ({times})" if times else "")
                  + "; comparing:")
    run_compare([s.out for s in steps], baseline=baseline or row_name(names[0]),
                csv_file=out / "compare.csv", json_file=out / "compare.json",
                markdown_file=out / "compare.md", plot_file=out / "compare.png")
    console.print(f"wrote {out}/compare.png, compare.md, compare.csv, compare.json "
                  f"(again any time: {shlex.join(['bot', 'compare', str(out), '--plot', str(out / 'compare.png')])})")
    return out
