"""Join pretrain runs with the fine-tune runs that used their weights, one row per backbone.

The join key is the sha256 of the backbone weights that each downstream summary records, never a folder name, so
runs can live anywhere. Pretrain runs whose configs differ only in `train.seed` are seeds of one row (with their
fine-tunes). Repeated runs (seeds, repeated fine-tunes) are reduced to mean, min, max, std and count; each row's
difference against the baseline row is mean minus mean, in percentage points. `bot evaluate-cls` runs (task
"classify") give a row's top-1/top-5 when no pretrain run does (weights from elsewhere).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from bot.engine.errors import BotError

from .discover import Run, unique_names


@dataclass(frozen=True)
class Metric:
    key: str        # the key in summary.json's metrics
    task: str       # the stage that writes it
    label: str      # column heading
    shown: bool     # in the terminal/markdown table and the plot (csv/json carry every metric)


METRICS = (
    Metric("top1", "pretrain", "top-1", True),
    Metric("top5", "pretrain", "top-5", True),
    Metric("voc07_map50", "detect", "VOC07 mAP", True),
    Metric("voc_map50", "detect", "VOC mAP (area)", False),
    Metric("coco_map", "detect", "COCO mAP", True),
    Metric("coco_map50", "detect", "COCO mAP50", False),
    Metric("miou", "segment", "mIoU", True),           # over the classes present in ground truth or predictions
    Metric("miou_all", "segment", "mIoU all", False),  # over every class: the paper's (and GluonCV's) mean
    Metric("pixel_acc", "segment", "pixAcc", True),
)
BY_KEY = {m.key: m for m in METRICS}


@dataclass
class Stat:
    """Several runs' values of one metric, in percent."""
    values: list[float]

    n = property(lambda self: len(self.values))
    mean = property(lambda self: sum(self.values) / len(self.values))
    min = property(lambda self: min(self.values))
    max = property(lambda self: max(self.values))

    @property
    def std(self) -> float:
        """Sample standard deviation (n-1); 0 for a single run."""
        if self.n < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))


@dataclass(frozen=True)
class Interval:
    """A paired-bootstrap interval of a row's difference against the baseline, in percentage points."""
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass
class Row:
    name: str
    recipe: str
    arch: str
    sha256: str
    pretrain: list[Run] = field(default_factory=list)      # empty: weights not among the runs found
    detect: list[Run] = field(default_factory=list)
    segment: list[Run] = field(default_factory=list)
    stats: dict[str, Stat] = field(default_factory=dict)
    deltas: dict[str, float | None] = field(default_factory=dict)
    paper: dict[str, float] = field(default_factory=dict)         # --paper: the published values (%), if a ladder row
    paper_deltas: dict[str, float] = field(default_factory=dict)  # --paper: the published value minus B-standard's
    paper_label: str = ""                                         # --paper: the row's name in the paper's tables
    paper_top1: dict[str, float] = field(default_factory=dict)    # --paper: metric -> top-1 its own table prints
    classify: list[Run] = field(default_factory=list)            # `bot evaluate-cls` runs of these weights
    seeds: list[int] = field(default_factory=list)               # pretrain seeds grouped into this row (2 or more)
    ci: dict[str, Interval] = field(default_factory=dict)        # metric -> bootstrap interval of its delta
    ci_notes: dict[str, str] = field(default_factory=dict)       # task -> why its metrics have no interval

    def runs(self, task: str) -> list[Run]:
        return {"pretrain": self.pretrain, "classify": self.classify, "detect": self.detect,
                "segment": self.segment}[task]


@dataclass
class Comparison:
    rows: list[Row]
    baseline: Row
    bootstrap: int = 0          # resamples behind the intervals (0: none computed)

    def metrics(self, shown_only: bool = False) -> list[Metric]:
        """The metrics at least one row has (measured, or published with --paper), in METRICS order; shown_only:
        the shown ones and every metric with a published value (mIoU all under --paper)."""
        return [m for m in METRICS if (m.shown or not shown_only or any(m.key in r.paper for r in self.rows))
                and any(m.key in r.stats or m.key in r.paper for r in self.rows)]

    @property
    def has_paper(self) -> bool:
        return any(r.paper for r in self.rows)


def backbone_key(run: Run) -> str:
    """What downstream runs share with the pretrain run whose weights they loaded."""
    if run.sha256:
        return run.sha256
    # Random-init backbones have no weights file: group their fine-tunes by architecture.
    return f"random-init:{run.arch}"


def orphan_name(run: Run) -> str:
    """A name for weights that no pretrain run found here produced: the name the fine-tune recorded for them
    (file stem, run dir, timm:NAME), else the folder or file they came from."""
    source = str(run.backbone.get("source") or "")
    if not run.sha256 or not source or source == "random-init":
        return f"random-init {run.arch}".strip()
    if run.backbone.get("name"):
        return str(run.backbone["name"])
    p = Path(source)
    return p.parent.name if p.name == "model.safetensors" and p.parent.name else p.stem


def has_value(run: Run, key: str) -> bool:
    return isinstance(run.metrics.get(key), (int, float)) and math.isfinite(run.metrics[key])


def metric_runs(row: Row, metric: Metric) -> list[Run]:
    """The runs a row's value of `metric` comes from: its pretrain runs for top-1/top-5, else its `bot evaluate-cls`
    runs (weights from elsewhere); the stage's runs for the others."""
    runs = [r for r in row.runs(metric.task) if has_value(r, metric.key)]
    if not runs and metric.task == "pretrain":
        runs = [r for r in row.classify if has_value(r, metric.key)]
    return runs


def collect_stats(row: Row) -> None:
    for m in METRICS:
        values = [float(r.metrics[m.key]) * 100 for r in metric_runs(row, m)]
        if not values and m.task == "pretrain" and not row.pretrain and m.key == "top1":
            # Weights from elsewhere: the checkpoint's own top-1 (safetensors metadata) is the best we know.
            tops = [r.backbone.get("top1") for r in row.detect + row.segment]
            values = [float(t) * 100 for t in tops if isinstance(t, (int, float))][:1]
        if values:
            row.stats[m.key] = Stat(values)


# Config keys that say where or how fast a run went, not what it computed: seeds differing only in these group.
RUN_ONLY_KEYS = {("train", "seed"), ("train", "device"), ("data", "workers"), ("train", "eval_every"),
                 ("train", "log_every"), ("train", "compile"), ("train", "channels_last"), ("train", "deterministic")}


def seed_key(run: Run) -> tuple[str, int] | None:
    """(the run's config without its seed and run-only keys, its seed), or None when it records no seed."""
    cfg = run.config if isinstance(run.config, dict) else {}
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    seed = train.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        return None
    rest = {section: ({k: v for k, v in body.items() if (section, k) not in RUN_ONLY_KEYS}
                      if isinstance(body, dict) else body) for section, body in cfg.items()}
    return json.dumps(rest, sort_keys=True, default=str), seed


def group_seeds(rows: dict[str, Row]) -> dict[str, Row]:
    """Rows of pretrain runs whose configs differ only in train.seed (`bot demo --seeds N`) become one row, the
    first one's, holding every seed's runs."""
    by_config: dict[str, Row] = {}
    out: dict[str, Row] = {}
    for key, row in rows.items():
        keys = {seed_key(r) for r in row.pretrain}
        config = next(iter(keys))[0] if len(keys) == 1 and None not in keys else None
        first = by_config.get(config) if config is not None else None
        seed = next(iter(keys))[1] if config is not None else None
        if first is not None and seed not in first.seeds:
            first.pretrain += row.pretrain
            first.seeds.append(seed)
            continue
        if config is not None:
            by_config[config] = row
            row.seeds = [seed]
        out[key] = row
    for row in out.values():
        if len(row.seeds) < 2:
            row.seeds = []
    return out


def pick_baseline(rows: list[Row], wanted: str | None) -> Row:
    """--baseline: a row name, a recipe (if only one row has it), a run path, or a sha256 prefix; default the first."""
    if not wanted:
        return rows[0]
    for test in (lambda r: r.name == wanted,
                 lambda r: r.recipe == wanted,
                 lambda r: any(Path(wanted).resolve() == run.path.resolve() for run in r.pretrain),
                 lambda r: len(wanted) >= 6 and r.sha256.startswith(wanted)):
        hits = [r for r in rows if test(r)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise BotError(f"--baseline {wanted}: matches several rows ({', '.join(r.name for r in hits)}); give a name")
    raise BotError(f"--baseline {wanted}: no such backbone (rows: {', '.join(r.name for r in rows)})")


def join(runs: list[Run], baseline: str | None = None) -> Comparison:
    """One row per backbone: pretrain runs first (in the order found), then weights only fine-tunes refer to."""
    rows: dict[str, Row] = {}
    for run in (r for r in runs if r.task == "pretrain"):
        key = backbone_key(run)
        if key not in rows:
            rows[key] = Row("", run.recipe or str((run.config or {}).get("recipe", "")), run.arch, run.sha256)
        rows[key].pretrain.append(run)
    rows = group_seeds(rows)
    names = unique_names([row.pretrain[0].path for row in rows.values()])
    for row, name in zip(rows.values(), names):
        row.name = name
    keys = {backbone_key(r): key for key, row in rows.items() for r in row.pretrain}  # every seed's weights
    for run in (r for r in runs if r.task != "pretrain"):
        key = backbone_key(run)
        key = keys.get(key, key)
        if key not in rows:
            rows[key] = Row(orphan_name(run), run.recipe, run.arch, run.sha256)
        rows[key].runs(run.task).append(run)
    if not rows:
        raise BotError("no finished runs to compare")
    ordered = list(rows.values())
    taken = set()
    for row in ordered:
        # Orphan names can clash with each other or with a pretrain folder's name: number them apart.
        base, i = row.name, 2
        while row.name in taken:
            row.name, i = f"{base}#{i}", i + 1
        taken.add(row.name)
        collect_stats(row)
    return set_baseline(Comparison(ordered, ordered[0]), pick_baseline(ordered, baseline))


def set_baseline(comp: Comparison, base: Row) -> Comparison:
    """Make `base` the baseline row and every row's deltas mean minus its mean."""
    comp.baseline = base
    for row in comp.rows:
        for m in METRICS:
            a, b = row.stats.get(m.key), base.stats.get(m.key)
            row.deltas[m.key] = None if a is None or b is None else a.mean - b.mean
    return comp
