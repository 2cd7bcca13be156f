"""Writing ``compare``'s results: markdown tables and CSV files."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

def _cell(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in cells]
    return "\n".join(lines)


RUN_HEADER = {"eval/reward_mean": "reward", "eval/kl": "KL (nats/seq)", "wall_s": "wall (s)",
              "samples_per_s": "samples/s"}


DIGITS = {"wall_s": 0, "samples_per_s": 1}


def runs_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    cols = [c for c in rows[0].keys() if c != "path"]  # the path is in runs.csv
    body = [[_cell(r[c], DIGITS.get(c, 3)) for c in cols] for r in rows]
    return markdown_table([RUN_HEADER.get(c, c) for c in cols], body)


def aggregated_markdown(aggs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    def pm(a, m, digits=3):
        mean, std = a[f"{m}_mean"], a[f"{m}_std"]
        if math.isnan(mean):
            return ""
        return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")

    header = ["objective", "kl", *keys, "seeds", "not finished", "reward", "KL (nats/seq)", "wall (s)", "samples/s"]
    body = [[a["objective"], a["kl"], *[a[k] for k in keys], a["n"], a["not_finished"], pm(a, "eval/reward_mean"),
             pm(a, "eval/kl"), pm(a, "wall_s", DIGITS["wall_s"]), pm(a, "samples_per_s", DIGITS["samples_per_s"])]
            for a in aggs]
    return markdown_table(header, body)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if isinstance(r.get(c), float) and math.isnan(r[c]) else r.get(c, "")) for c in cols})

