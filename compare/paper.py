"""`bot compare --paper`: the paper's published numbers (compare/paper.yaml) beside every row whose recipe is a row
of the paper's ladder, and the paper's deltas against B-standard beside the measured ones."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from bot.engine.config import load_yaml

from .join import Comparison, set_baseline

PAPER_FILE = Path(__file__).with_name("paper.yaml")


@lru_cache(maxsize=1)
def paper_table() -> dict:
    """{"reference": recipe, "rows": {recipe: {label, metric: value in %}}}."""
    return load_yaml(PAPER_FILE)


def paper_values(recipe: str) -> dict[str, float]:
    row = paper_table()["rows"].get(recipe) or {}
    return {k: float(v) for k, v in row.items() if k != "label"}


def attach_paper(comp: Comparison, rebase: bool = True) -> Comparison:
    """Fill each row's `paper` (values) and `paper_deltas` (against the paper's reference row). With `rebase`, the
    measured deltas are recomputed against the row trained with the reference recipe, when exactly one row is."""
    table = paper_table()
    reference = paper_values(table["reference"])
    for row in comp.rows:
        row.paper = paper_values(row.recipe)
        row.paper_label = (table["rows"].get(row.recipe) or {}).get("label", "")
        row.paper_deltas = {k: v - reference[k] for k, v in row.paper.items() if k in reference}
    refs = [r for r in comp.rows if r.recipe == table["reference"]]
    if rebase and len(refs) == 1:
        set_baseline(comp, refs[0])
    return comp
