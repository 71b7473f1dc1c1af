"""Paired-bootstrap confidence intervals for every row's difference against the baseline row.

For each metric, the validation images the baseline's runs were scored on are resampled with replacement (1,000
times by default, a fixed seed); on each resample the metric is recomputed for the row's runs and for the
baseline's from their per_image.npz files (compare/bootstrap.py), the same resample for both (paired), averaged
over each row's runs (seeds), and differenced. The interval is the 95% percentile interval of those differences.
What it covers: which validation images happened to be in the set. What it does not: training noise (another
seed gives another network); repeated seeds show that spread beside it.

No interval, with a note saying why, when a run has no per_image.npz (written before bot recorded them), when the
file is unreadable or does not reproduce its summary.json, or when the two rows were scored on different images.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bot.engine.per_image import FILE_NAME, PerImage, read_per_image

from .bootstrap import DEFAULT_RESAMPLES, LEVEL, SEED, percentile_interval, resample_weights, statistics
from .discover import Run
from .join import Comparison, Interval, Row, metric_runs

# summary.json stores fractions; a per-image recomputation that differs from them by more than this is not the
# same evaluation (float sums in another order differ by ~1e-16)
REPRODUCE_TOLERANCE = 1e-6
STAGE_OF = {"pretrain": "classification", "detect": "detection", "segment": "segmentation"}


@dataclass
class Bootstrapper:
    resamples: int = DEFAULT_RESAMPLES
    seed: int = SEED
    level: float = LEVEL
    files: dict = field(default_factory=dict)        # run path -> PerImage, or the reason there is none
    values: dict = field(default_factory=dict)       # (run path, reference run path) -> {metric: (R + 1,) values}
    weights: dict = field(default_factory=dict)      # reference run path -> (R, N) resample weights

    def per_image(self, run: Run) -> PerImage | str:
        if run.path not in self.files:
            path = run.path / FILE_NAME
            if not path.is_file():
                self.files[run.path] = f"{run.path} has no {FILE_NAME} (a run written before bot recorded per-image results)"
            else:
                try:
                    self.files[run.path] = read_per_image(path)
                except ValueError as e:
                    self.files[run.path] = f"{path}: {e}"
        return self.files[run.path]

    def resamples_of(self, reference: Run, data: PerImage) -> np.ndarray:
        """The resamples of the reference run's images (the same for every row compared with it: paired)."""
        if reference.path not in self.weights:
            self.weights[reference.path] = resample_weights(len(data), self.resamples, self.seed)
        return self.weights[reference.path]

    def run_values(self, run: Run, data: PerImage, reference: Run) -> dict:
        """metric -> its values on each resample and, last, on the full set (the run's images put in the
        reference run's order); or, for a metric the file does not reproduce, why not."""
        key = (run.path, reference.path)
        if key not in self.values:
            ref = self.files[reference.path]
            weights = self.resamples_of(reference, ref)
            position = {image: i for i, image in enumerate(ref.images.tolist())}
            columns = np.asarray([position[i] for i in data.images.tolist()], np.int64)
            w = np.concatenate([weights, np.ones((1, weights.shape[1]), weights.dtype)])[:, columns]
            values: dict = statistics(w, data)
            for name, v in values.items():
                recorded = run.metrics.get(name)
                if isinstance(recorded, (int, float)) and np.isfinite(v[-1]) and abs(v[-1] - recorded) > REPRODUCE_TOLERANCE:
                    values[name] = (f"{run.path / FILE_NAME} gives {name} {v[-1]:.6f}, its summary.json "
                                    f"{recorded:.6f}: not the same evaluation")
            self.values[key] = values
        return self.values[key]


def unpaired_reason(reference: PerImage, other: PerImage, run: Run) -> str | None:
    if other.task != reference.task:
        return f"{run.path / FILE_NAME} holds {other.task} results, not {reference.task}"
    if len(other) == len(reference) and set(other.images.tolist()) == set(reference.images.tolist()):
        return None
    common = len(set(other.images.tolist()) & set(reference.images.tolist()))
    return (f"scored on other images than the baseline ({len(other)} vs {len(reference)}, {common} in common): "
            f"not paired")


def row_interval(boot: Bootstrapper, row: Row, base: Row, metric) -> Interval | str | None:
    """The interval of row's delta for `metric`, or a reason for none (None: no delta to explain)."""
    runs, base_runs = metric_runs(row, metric), metric_runs(base, metric)
    if not runs or not base_runs:
        return None
    data = [boot.per_image(r) for r in base_runs + runs]
    missing = next((d for d in data if isinstance(d, str)), None)
    if missing:
        return missing
    reference = data[0]
    for run, d in zip(base_runs + runs, data):
        reason = unpaired_reason(reference, d, run)
        if reason:
            return reason
    per_run = [boot.run_values(r, d, base_runs[0]) for r, d in zip(base_runs + runs, data)]
    if any(metric.key not in v for v in per_run):
        return f"{metric.label}: not in the per-image results"
    bad = next((v[metric.key] for v in per_run if isinstance(v[metric.key], str)), None)
    if bad:
        return bad
    nb = len(base_runs)
    base_mean = np.mean([v[metric.key][:-1] for v in per_run[:nb]], axis=0)
    row_mean = np.mean([v[metric.key][:-1] for v in per_run[nb:]], axis=0)
    delta = (row_mean - base_mean) * 100
    finite = delta[np.isfinite(delta)]
    if len(finite) < 0.9 * len(delta):
        return f"{metric.label}: undefined on {len(delta) - len(finite)} of {len(delta)} resamples"
    return Interval(*percentile_interval(finite, boot.level))


def attach_intervals(comp: Comparison, resamples: int = DEFAULT_RESAMPLES, seed: int = SEED) -> Comparison:
    """Fill each row's `ci` (metric -> Interval) and `ci_notes` (stage -> why there is none)."""
    comp.bootstrap = max(0, int(resamples))
    if not comp.bootstrap:
        return comp
    boot = Bootstrapper(comp.bootstrap, seed)
    for row in comp.rows:
        row.ci.clear()
        row.ci_notes.clear()
        if row is comp.baseline:
            continue
        for metric in comp.metrics():
            if row.deltas.get(metric.key) is None:
                continue
            result = row_interval(boot, row, comp.baseline, metric)
            if isinstance(result, Interval):
                row.ci[metric.key] = result
            elif result:
                row.ci_notes.setdefault(STAGE_OF[metric.task], result)
    return comp
