"""Prompt datasets for the online objectives.

Every source ends as two lists of :class:`Prompt` (train and a fixed, held-out eval set): token ids for the policy,
the decoded text for rewards and logs, and any extra dataset columns (passed on to reward functions).

Sources (``dataset.kind``):
* ``tiny_reviews``: the embedded review generator (no download).
* ``hf``: a Hugging Face dataset by hub id or local path (``datasets.load_dataset``).
* ``files``: local jsonl/json/csv/parquet files with a column mapping.

With ``prompt_min_tokens``/``prompt_max_tokens`` set, each text is cut to a random number of leading tokens in that
range (the IMDb "review prefix" recipe); otherwise the whole column is the prompt, left-truncated to
``max_prompt_tokens``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence


class DatasetError(ValueError):
    """A dataset that cannot be used as configured (missing column, empty split, missing files)."""


@dataclass
class Prompt:
    ids: list[int]
    text: str
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptData:
    train: list[Prompt]
    eval: list[Prompt]


def _cut(tokenizer, text: str, rng: random.Random, cfg: Mapping[str, Any]) -> Optional[Prompt]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    lo, hi = cfg.get("prompt_min_tokens"), cfg.get("prompt_max_tokens")
    if lo is not None and hi is not None:
        if not 1 <= int(lo) <= int(hi):
            raise DatasetError(f"dataset.prompt_min_tokens={lo} / prompt_max_tokens={hi}: need 1 <= min <= max.")
        k = rng.randint(int(lo), int(hi))
        if len(ids) < k:
            return None
        ids = ids[:k]
    else:
        max_tokens = cfg.get("max_prompt_tokens")
        if max_tokens:
            ids = ids[-int(max_tokens):]
    if not ids:
        return None
    return Prompt(ids=ids, text=tokenizer.decode(ids))


def _from_texts(tokenizer, rows: Sequence[Mapping[str, Any]], column: str, n: Optional[int], seed: int,
                cfg: Mapping[str, Any]) -> list[Prompt]:
    rng = random.Random(seed)
    out: list[Prompt] = []
    for row in rows:
        p = _cut(tokenizer, str(row[column]), rng, cfg)
        if p is None:
            continue
        p.columns = {k: v for k, v in row.items() if k != column}
        out.append(p)
        if n is not None and len(out) >= n:
            break
    return out


def _tiny_reviews(cfg: Mapping[str, Any], tokenizer) -> PromptData:
    from rlhf_exp.task import reviews

    seed = int(cfg.get("seed", 0))
    n_train, n_eval = int(cfg.get("train_size", 8192)), int(cfg.get("eval_size", 128))
    train_rows = [{"text": r.text, "label": r.label} for r in reviews.split_reviews("prompts_train", n_train, seed)]
    eval_rows = [{"text": r.text, "label": r.label} for r in reviews.split_reviews("prompts_eval", 2 * n_eval, seed)]
    return PromptData(
        train=_from_texts(tokenizer, train_rows, "text", n_train, seed, cfg),
        eval=_from_texts(tokenizer, eval_rows, "text", n_eval, seed + 1, cfg),
    )


def _check_column(rows_columns: Sequence[str], column: str, where: str) -> None:
    if column not in rows_columns:
        raise DatasetError(f"{where} has no column {column!r}. Columns found: {', '.join(rows_columns)}. "
                           f"Set dataset.prompt_column=<one of them>.")


def _load_hf_split(cfg: Mapping[str, Any], split: str):
    import datasets

    from rlhf_exp.modeling import _hub_reachable, _offline_env

    path = str(cfg["path"])
    kind = cfg.get("kind")
    try:
        if kind == "files":
            files = cfg.get("data_files")
            if not files:
                raise DatasetError("dataset.kind=files needs dataset.data_files (a path or {train: ..., test: ...}).")
            files = dict(files) if isinstance(files, Mapping) else {"train": files}
            for f in files.values():
                for one in ([f] if isinstance(f, str) else list(f)):
                    if not Path(one).exists():
                        raise DatasetError(f"dataset.data_files: {one} does not exist.")
            return datasets.load_dataset(path, data_files=files, split=split)
        if not Path(path).exists() and (_offline_env() or not _hub_reachable()):
            raise DatasetError(
                f"dataset.path={path!r} is a hub dataset and the hub cannot be reached from here. On a machine with "
                f"internet run `python -c \"import datasets; datasets.load_dataset('{path}').save_to_disk('DIR')\"` "
                f"(or download the files), copy them here and use dataset=files with dataset.data_files=..., or "
                f"set dataset.path=DIR.")
        if Path(path).is_dir() and (Path(path) / "dataset_dict.json").exists():
            return datasets.load_from_disk(path)[split]
        return datasets.load_dataset(path, cfg.get("name"), split=split)
    except DatasetError:
        raise
    except Exception as e:  # datasets raises many types; keep the cause and say what was asked for
        raise DatasetError(f"Could not load split {split!r} of dataset.path={path!r}: {e}") from e


def _hf(cfg: Mapping[str, Any], tokenizer) -> PromptData:
    column = cfg.get("prompt_column", "prompt")
    seed = int(cfg.get("seed", 0))
    parts = []
    for split, n, s in ((cfg.get("train_split", "train"), cfg.get("train_size"), seed),
                        (cfg.get("eval_split", "test"), cfg.get("eval_size", 128), seed + 1)):
        ds = _load_hf_split(cfg, split)
        _check_column(ds.column_names, column, f"Split {split!r} of {cfg['path']}")
        ds = ds.shuffle(seed=s)
        parts.append(_from_texts(tokenizer, ds, column, None if n is None else int(n), s, cfg))
    return PromptData(train=parts[0], eval=parts[1])


SOURCES = {"tiny_reviews": _tiny_reviews, "hf": _hf, "files": _hf}


def load_prompt_data(cfg: Mapping[str, Any], tokenizer) -> PromptData:
    """Build the train and eval prompts described by the ``dataset`` config group."""
    kind = cfg.get("kind")
    if kind not in SOURCES:
        raise DatasetError(f"Unknown dataset.kind {kind!r}. Valid: {', '.join(SOURCES)}.")
    data = SOURCES[kind](cfg, tokenizer)
    if not data.train:
        raise DatasetError(f"dataset {cfg.get('name', kind)!r} produced no training prompts; check its columns and "
                           f"prompt length settings.")
    if not data.eval:
        raise DatasetError(f"dataset {cfg.get('name', kind)!r} produced no eval prompts.")
    return data


class PromptSampler:
    """Endless batches of training prompts: a seeded shuffle per pass over the data, no prompt repeated in a pass.

    Each prompt of a batch is repeated ``group_size`` times in a row (for GRPO/RLOO groups).
    """

    def __init__(self, prompts: Sequence[Prompt], seed: int):
        self.prompts = list(prompts)
        self.rng = random.Random(seed)
        self._order: list[int] = []

    def next(self, n: int) -> list[Prompt]:
        out = []
        while len(out) < n:
            if not self._order:
                self._order = list(range(len(self.prompts)))
                self.rng.shuffle(self._order)
            out.append(self.prompts[self._order.pop()])
        return out

