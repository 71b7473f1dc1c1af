"""`bot compare --paper`: the paper's published numbers (compare/paper.yaml) beside every row whose recipe is a row
of the paper's ladder, the paper's deltas against B-standard beside the measured ones, and for each transfer number
the top-1 its own table prints for the row (Table 6 and Tables 8-9 differ for "+ mixup w/o distill")."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from bot.engine.config import load_yaml

from .join import Comparison, set_baseline

PAPER_FILE = Path(__file__).with_name("paper.yaml")
TABLES = ("table8", "table9")


@lru_cache(maxsize=1)
def paper_table() -> dict:
    """{"reference": recipe, "rows": {recipe: {label, top1, table8: {top1, metric: %}, table9: {...}}}}."""
    return load_yaml(PAPER_FILE)


def paper_values(recipe: str) -> dict[str, float]:
    """The row's published values, flat: top1 (its top-1 column) and every transfer metric of Tables 8 and 9."""
    row = paper_table()["rows"].get(recipe) or {}
    out = {"top1": float(row["top1"])} if "top1" in row else {}
    for table in TABLES:
        out.update({k: float(v) for k, v in (row.get(table) or {}).items() if k != "top1"})
    return out


def paper_top1s(recipe: str) -> dict[str, float]:
    """metric -> the top-1 that the metric's own table prints for the row."""
    row = paper_table()["rows"].get(recipe) or {}
    return {k: float(t["top1"]) for table in TABLES if (t := row.get(table)) for k in t if k != "top1"}


def attach_paper(comp: Comparison, rebase: bool = True) -> Comparison:
    """Fill each row's `paper` (values), `paper_top1` (each transfer value's own table's top-1) and `paper_deltas`
    (against the paper's reference row). With `rebase`, the measured deltas are recomputed against the row trained
    with the reference recipe, when exactly one row is."""
    table = paper_table()
    reference = paper_values(table["reference"])
    for row in comp.rows:
        row.paper = paper_values(row.recipe)
        row.paper_top1 = paper_top1s(row.recipe)
        row.paper_label = (table["rows"].get(row.recipe) or {}).get("label", "")
        row.paper_deltas = {k: v - reference[k] for k, v in row.paper.items() if k in reference}
    refs = [r for r in comp.rows if r.recipe == table["reference"]]
    if rebase and len(refs) == 1:
        set_baseline(comp, refs[0])
    return comp
