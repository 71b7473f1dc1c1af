"""`bot demo`: the whole flow on the synthetic shapes world, at a scale that fits 10 minutes on 2 CPU cores.

For each recipe: `bot pretrain`, then `bot finetune-detect` and `bot finetune-seg` on its weights, each in its own
process (`python -m cli ...`), exactly as a user would run them; then the comparison table and plot. Layout:
`OUT/pretrain/<recipe>`, `OUT/detect/<recipe>`, `OUT/segment/<recipe>`, `OUT/compare.{png,md,csv,json}`.
Re-running skips finished runs (summary.json) and resumes interrupted ones (last.ckpt).
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from engine.errors import BotError

DEFAULT_RECIPES = "resnet50b-standard,resnet50d"  # the first two rows of the paper's ladder (Tables 8 and 9)
# Demo scale per stage, on top of each stage's own synthetic defaults: pretrain 12 epochs per 120 of the recipe's
# (mixup's 200 -> 20; measured before: 63% top-1 for the resnet50d recipe, 23% for the slower-learning A-standard
# baseline), detection as its default, segmentation 10 of its 20 epochs; the demo also shrinks the arch to `--depth`.
# About a quarter of an hour for 2 recipes x 3 stages on 2 CPU cores (README, "bot demo").
DEMO_PRETRAIN_EPOCHS = 12  # per 120 epochs of the recipe
DEMO_ARGS = {
    "pretrain": [],
    "finetune-detect": [],
    "finetune-seg": ["--epochs", "10"],
}
STAGE_DIRS = {"pretrain": "pretrain", "finetune-detect": "detect", "finetune-seg": "segment"}
# Short names for the `+trick` form of --recipes: "+label-smoothing" after "resnet50d" means "resnet50d-ls".
TRICK_ALIASES = {"label-smoothing": "ls", "labelsmoothing": "ls", "smoothing": "ls", "cos": "cosine"}

console = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Step:
    stage: str                 # a bot command: pretrain | finetune-detect | finetune-seg
    recipe: str
    out: Path
    args: list[str] = field(default_factory=list)   # everything but --out / --resume

    def argv(self, resume: bool) -> list[str]:
        # A resumed run continues its own config.yaml (the stages refuse or ignore other options next to --resume).
        tail = ["--out", str(self.out), "--resume"] if resume else [*self.args, "--out", str(self.out)]
        return [sys.executable, "-m", "cli", self.stage, *tail]

    def state(self) -> str:
        if (self.out / "summary.json").exists():
            return "finished"
        return "resume" if (self.out / "last.ckpt").exists() else "start"


def resolve_recipes(text: str) -> list[str]:
    """`baseline,resnet50d,+cosine,+label-smoothing` -> recipe names; `+x` extends the last plain name: `resnet50d-x`."""
    from pretrain.recipes import recipe_names

    known = recipe_names()
    names, anchor = [], None
    for token in (t.strip() for t in text.split(",")):
        if not token:
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


def demo_arch(recipe: str, depth: int) -> str:
    """The recipe's ResNet variant (A/B/C/D) at the demo's depth: baseline (resnet50a) -> resnet18a."""
    from pretrain.backbones import parse_arch
    from pretrain.recipes import load_recipe

    _, _, variant = parse_arch(load_recipe(recipe)["model"]["arch"])
    return f"resnet{depth}{variant.lower()}"


def plan(recipes: list[str], out: Path, *, depth: int = 18, teacher: str | None = None,
         extra: dict[str, list[str]] | None = None) -> list[Step]:
    from pretrain.recipes import load_recipe, scaled_epochs

    extra = extra or {}
    steps = []
    for recipe in recipes:
        name = Path(recipe).stem
        pre = out / "pretrain" / name
        epochs = scaled_epochs(load_recipe(recipe)["schedule"]["epochs"], DEMO_PRETRAIN_EPOCHS)
        args = ["--recipe", recipe, "--arch", demo_arch(recipe, depth), "--epochs", str(epochs), *DEMO_ARGS["pretrain"]]
        if "teacher" in load_recipe(recipe).get("requires", []):
            if not teacher:
                raise BotError(f"--recipes: {recipe!r} distils from a teacher; give --teacher RUN_DIR|FILE.safetensors")
            args += ["--teacher", str(teacher)]
        steps.append(Step("pretrain", name, pre, args + list(extra.get("pretrain", []))))
        for stage in ("finetune-detect", "finetune-seg"):
            steps.append(Step(stage, name, out / STAGE_DIRS[stage] / name,
                              ["--backbone", str(pre), *DEMO_ARGS[stage], *extra.get(stage, [])]))
    return steps


def run_subprocess(argv: list[str]) -> int:
    return subprocess.run(argv).returncode


def children_cpu() -> float:
    """User + system CPU seconds of the finished child processes: the measure that stays put when others share the cores."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_steps(steps: list[Step], runner=run_subprocess) -> list[tuple[Step, str, float]]:
    """Run each step that is not finished; stop at the first failure with a BotError naming the run."""
    done = []
    for i, step in enumerate(steps, 1):
        state = step.state()
        head = f"[{i}/{len(steps)}] {step.stage} {step.recipe} -> {step.out}"
        if state == "finished":
            console.print(f"[bold]{head}[/]: finished earlier (summary.json), skipped")
            done.append((step, "skipped", 0.0))
            continue
        argv = step.argv(resume=state == "resume")
        console.print(f"[bold]{head}[/]{': resuming from last.ckpt' if state == 'resume' else ''}")
        console.print(f"  $ bot {shlex.join(argv[3:])}", style="dim")
        t0, cpu0 = time.time(), children_cpu()
        code = runner(argv)
        seconds, cpu = time.time() - t0, children_cpu() - cpu0
        if code != 0 or not (step.out / "summary.json").exists():
            hint = "interrupted" if code in (130, -2) else f"failed (exit code {code})"
            raise BotError(f"{step.out}: `bot {step.stage}` {hint}; see its output above. "
                           f"Run `bot demo` again with the same --out to resume")
        console.print(f"  done in {seconds:.0f} s (CPU time {cpu:.0f} s)")
        done.append((step, "resumed" if state == "resume" else "ran", seconds))
    return done


def run_demo(*, recipes: str = DEFAULT_RECIPES, out: str | Path = "runs/demo", depth: int = 18,
             teacher: str | None = None, pretrain_args: str = "", detect_args: str = "", segment_args: str = "",
             baseline: str | None = None, runner=run_subprocess) -> Path:
    from .command import run_compare

    out = Path(out)
    names = resolve_recipes(recipes)
    extra = {"pretrain": shlex.split(pretrain_args or ""), "finetune-detect": shlex.split(detect_args or ""),
             "finetune-seg": shlex.split(segment_args or "")}
    steps = plan(names, out, depth=depth, teacher=teacher, extra=extra)
    t0 = time.time()
    console.print(f"[bold]bot demo[/]: {len(names)} recipes ({', '.join(names)}) x pretrain, detection, "
                  f"segmentation -> {out}")
    done = run_steps(steps, runner)
    times = ", ".join(f"{s.stage} {s.recipe} {sec:.0f} s" for s, how, sec in done if how != "skipped")
    console.print(f"[bold]all runs finished[/] in {time.time() - t0:.0f} s" + (f" ({times})" if times else "")
                  + "; comparing:")
    run_compare([s.out for s in steps], baseline=baseline or Path(names[0]).stem,
                csv_file=out / "compare.csv", json_file=out / "compare.json",
                markdown_file=out / "compare.md", plot_file=out / "compare.png")
    console.print(f"wrote {out}/compare.png, compare.md, compare.csv, compare.json "
                  f"(again any time: bot compare {out} --plot {out}/compare.png)")
    return out
