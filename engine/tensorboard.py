"""TensorBoard event files beside metrics.jsonl, for people who look at training curves in TensorBoard.

Every record a stage logs (engine/rundir.py `RunDir.log`) becomes scalars at its global step: the per-batch records
under `train/` (loss, lr, images_per_second, the stage's own loss terms), an epoch record's `train_loss` under
`epoch/` and its evaluation metrics under `eval/`. `train.tensorboard` decides: `auto` writes when the tensorboard
package is installed (`pip install 'bot[tensorboard]'`), `true` requires it, `false` never writes. A resumed run
opens its writer with `purge_step` one past the checkpoint's step, so TensorBoard drops what the killed run logged after
it, as `RunDir.truncate_log` does for metrics.jsonl.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import BotError

# Position fields of a record, not curves of their own.
POSITION_KEYS = ("epoch", "step")
# The fields of an epoch record that describe training rather than the evaluation (engine/loop.py's `fit`).
EPOCH_TRAINING_KEYS = ("train_loss", "lr")


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def check_setting(value, where: str = "train.tensorboard") -> None:
    """Before any work: `true` needs the package; one line saying how to get it."""
    if value is True and not available():
        raise BotError(f"{where} true: the tensorboard package is not installed "
                       f"(pip install tensorboard, or --set {where}=auto)")


def open_writer(folder: Path, value, purge_step: int | None = None):
    """A SummaryWriter writing into `folder` (the run directory), or None when `value` (auto|true|false) says no."""
    if value is False or value == "false" or (value in ("auto", None) and not available()):
        return None
    check_setting(value)
    from torch.utils.tensorboard import SummaryWriter

    # flush_secs: a curve a user is watching should not lag two minutes (the default) behind the run
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step or None, flush_secs=20)


def scalars_of(record: dict) -> dict[str, float]:
    """A metrics.jsonl record as TensorBoard tags: per-batch records under train/, epoch records under epoch/ and
    eval/ (an epoch record is the one carrying `train_loss`)."""
    epoch_record = "train_loss" in record
    tags = {}
    for key, value in record.items():
        if key in POSITION_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not epoch_record:
            tags[f"train/{key}"] = float(value)
        elif key in EPOCH_TRAINING_KEYS:
            tags[f"epoch/{key}"] = float(value)
        else:
            tags[f"eval/{key}"] = float(value)
    return tags


def write_record(writer, record: dict) -> None:
    step = int(record.get("step", 0))
    for tag, value in scalars_of(record).items():
        writer.add_scalar(tag, value, step)
