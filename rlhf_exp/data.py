"""Datasets: prompts for the online objectives, and records for the offline ones (SFT, reward modelling, DPO, KTO).

Online: every source ends as two lists of :class:`Prompt` (train and a fixed, held-out eval set): token ids for the
policy, the decoded text for rewards and logs, and any extra dataset columns (passed on to reward functions).

Offline (:func:`load_offline_data`): the same sources give train and held-out lists of plain records in the format
the objective asks for (``OFFLINE_FORMATS``): ``sft`` {prompt, completion}, ``preference`` {prompt, chosen,
rejected[, margin]}, ``unpaired`` {prompt, completion, label}. ``dataset.columns`` maps these names to the
dataset's own columns.

Sources (``dataset.kind``):
* ``tiny_reviews``: the embedded review generator (no download).
* ``hf``: a Hugging Face dataset by hub id or local path (``datasets.load_dataset``).
* ``files``: local jsonl/json/csv/parquet files with a column mapping.

With ``prompt_min_tokens``/``prompt_max_tokens`` set, each text is cut to a random number of leading tokens in that
range (the IMDb "review prefix" recipe); otherwise the whole column is the prompt, left-truncated to
``max_prompt_tokens``. With ``chat_template: true`` (instruct models) the cut text becomes the user's turn in the
tokenizer's chat template, ending with the opening of the assistant's turn; ``Prompt.text`` stays the plain text
(what rewards and logs see).
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


def chat_prompt_text(tokenizer, text: str) -> str:
    """``text`` as the user's turn of the tokenizer's chat template, followed by the opening of the assistant's turn
    (the string the policy continues; tokenise it with ``add_special_tokens=False``)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DatasetError("dataset.chat_template=true, but the policy's tokenizer has no chat template (a base model's "
                           "usually has none). Set dataset.chat_template=false to use the plain prompt text, or "
                           "model.tokenizer=<a tokenizer folder with a chat template>.")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def chat_records(records: Sequence[Mapping[str, Any]], tokenizer) -> list[dict[str, Any]]:
    """Offline records with each non-empty ``prompt`` put in the chat template (see :func:`chat_prompt_text`)."""
    return [{**r, "prompt": chat_prompt_text(tokenizer, r["prompt"])} if r.get("prompt") else dict(r)
            for r in records]


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
    text = tokenizer.decode(ids)
    if cfg.get("chat_template"):
        ids = tokenizer(chat_prompt_text(tokenizer, text), add_special_tokens=False)["input_ids"]
    return Prompt(ids=ids, text=text)


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


def _check_column(rows_columns: Sequence[str], column: str, where: str,
                  option: str = "dataset.prompt_column") -> None:
    if column not in rows_columns:
        raise DatasetError(f"{where} has no column {column!r}. Columns found: {', '.join(rows_columns)}. "
                           f"Set {option}=<one of them>.")


def _load_hf_split(cfg: Mapping[str, Any], split: str):
    import datasets

    from rlhf_exp.modeling import _hub_reachable, _offline_env

    path = str(cfg.get("path"))
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
            if cfg.get("path") is None:
                path = _files_builder(files)
            if split not in files:
                raise DatasetError(f"dataset.data_files has no {split!r} split (it has {', '.join(files)}). Give "
                                   f"data_files as {{train: ..., {split}: ...}}, or set the split option to null to "
                                   f"hold out rows of the train split (offline objectives).")
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


_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _files_builder(files: Mapping[str, Any]) -> str:
    """The ``datasets`` builder (json | csv | parquet) for local files, from their extension."""
    names = [one for f in files.values() for one in ([f] if isinstance(f, str) else list(f))]
    kinds = {_BUILDERS.get(Path(n).suffix.lower()) for n in names}
    if None in kinds or len(kinds) != 1:
        raise DatasetError(f"dataset.data_files {names}: cannot tell the format from the extensions (want one of "
                           f"{', '.join(_BUILDERS)}, all the same); set dataset.path=json|csv|parquet.")
    return kinds.pop()


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


# ---------------------------------------------------------------------------------------------------------------
# Records for the offline objectives
# ---------------------------------------------------------------------------------------------------------------

# format -> (required record fields, optional record fields)
OFFLINE_FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sft": (("completion",), ("prompt",)),
    "preference": (("chosen", "rejected"), ("prompt", "margin")),
    "unpaired": (("prompt", "completion", "label"), ()),
}
RECORD_FIELDS = ("prompt", "completion", "text", "chosen", "rejected", "label", "margin")


@dataclass
class OfflineData:
    """Train and held-out records (dicts with the fields of their format)."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]


def _tiny_reviews_records(cfg: Mapping[str, Any], fmt: str) -> OfflineData:
    from rlhf_exp.task import reviews

    seed = int(cfg.get("seed", 0))
    n_train, n_eval = int(cfg.get("offline_train_size", 8192)), int(cfg.get("offline_eval_size", 512))
    if fmt == "sft":   # whole reviews, as the embedded policy was trained (no prompt)
        return OfflineData(*[[{"prompt": "", "completion": t} for t in reviews.split_data(f"sft_{part}", n, seed)]
                             for part, n in (("train", n_train), ("eval", n_eval))])
    return OfflineData(reviews.split_data(f"{fmt}_train", n_train, seed), reviews.split_data(f"{fmt}_eval", n_eval, seed))


def _columns(cfg: Mapping[str, Any]) -> dict[str, Optional[str]]:
    """``dataset.columns``: record field -> dataset column (default: the same name; null: the dataset has none)."""
    given = dict(cfg.get("columns") or {})
    unknown = set(given) - set(RECORD_FIELDS)
    if unknown:
        raise DatasetError(f"dataset.columns has unknown keys {sorted(unknown)}; valid: {', '.join(RECORD_FIELDS)}.")
    return {f: given.get(f, f) for f in RECORD_FIELDS}


def common_prefix_prompt(chosen: str, rejected: str, delimiter: Optional[str] = None) -> tuple[str, str, str]:
    """Split an implicit-prompt pair (hh-rlhf style: two full conversations) into prompt, chosen, rejected.

    The prompt is the longest common prefix, cut just after the last ``delimiter`` inside it when one is given
    (``"\\n\\nAssistant:"`` for hh-rlhf, so that the prompt ends with the assistant's turn marker).
    """
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    if delimiter:
        cut = chosen.rfind(delimiter, 0, n)
        n = cut + len(delimiter) if cut >= 0 else 0
    return chosen[:n], chosen[n:], rejected[n:]


def _as_label(v: Any, where: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("1", "true", "yes", "desirable", "0", "false", "no",
                                                     "undesirable"):
        return v.strip().lower() in ("1", "true", "yes", "desirable")
    raise DatasetError(f"{where}: label {v!r} is not a boolean (true/false, 1/0); KTO labels mark desirable "
                       f"completions.")


def _check_record_columns(found: Sequence[str], fmt: str, cols: Mapping[str, Optional[str]], where: str) -> str:
    """Check that the dataset has the columns the format needs; returns the sft source ("completion" or "text")."""
    required, optional = OFFLINE_FORMATS[fmt]
    need = list(required)
    source = "completion"
    if fmt == "sft" and (cols["completion"] is None or cols["completion"] not in found) and cols["text"] in found:
        need, source = ["text"], "text"    # plain-text SFT: the whole text is the completion, no prompt
    else:
        need += [f for f in optional if cols[f] is not None]
    for f in need:
        if cols[f] is None:
            raise DatasetError(f"objective needs a {f!r} column but dataset.columns.{f} is null.")
        _check_column(found, cols[f], where, option=f"dataset.columns.{f}")
    return source


def _to_records(rows, fmt: str, cfg: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    cols = _columns(cfg)
    source = _check_record_columns(list(rows.column_names), fmt, cols, where)
    delimiter = cfg.get("prompt_delimiter")
    out = []
    for i, row in enumerate(rows):
        get = (lambda f: row[cols[f]] if cols[f] is not None else None)
        if fmt == "sft":
            rec = ({"prompt": "", "completion": str(get("text"))} if source == "text" else
                   {"prompt": str(get("prompt") or ""), "completion": str(get("completion"))})
        elif fmt == "preference":
            chosen, rejected, prompt = str(get("chosen")), str(get("rejected")), get("prompt")
            if prompt is None:
                prompt, chosen, rejected = common_prefix_prompt(chosen, rejected, delimiter)
            else:
                prompt = str(prompt)
                if chosen.startswith(prompt) and rejected.startswith(prompt):  # completions that repeat the prompt
                    chosen, rejected = chosen[len(prompt):], rejected[len(prompt):]
            rec = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            if cols["margin"] is not None:
                rec["margin"] = float(get("margin"))
        else:
            rec = {"prompt": str(get("prompt")), "completion": str(get("completion")),
                   "label": _as_label(get("label"), f"{where}, row {i}")}
        out.append(rec)
    return out


def _hf_records(cfg: Mapping[str, Any], fmt: str) -> OfflineData:
    seed = int(cfg.get("seed", 0))
    n_train, n_eval = cfg.get("offline_train_size"), int(cfg.get("offline_eval_size", 512))
    train_split, eval_split = cfg.get("train_split", "train"), cfg.get("eval_split", "test")
    cols = _columns(cfg)                    # config errors first, before any loading
    source = cfg.get("data_files") or cfg.get("path")

    def where(split: str) -> str:
        return f"Split {split!r} of dataset {cfg.get('name')} ({source})"

    train = _load_hf_split(cfg, train_split).shuffle(seed=seed)
    _check_record_columns(list(train.column_names), fmt, cols, where(train_split))
    if eval_split is None:   # hold out the first n_eval rows of the shuffled train split
        if len(train) <= n_eval:
            raise DatasetError(f"{where(train_split)} has {len(train)} rows, too few to hold out "
                               f"dataset.offline_eval_size={n_eval}; lower it or give an eval split.")
        ev, train = train.select(range(n_eval)), train.select(range(n_eval, len(train)))
    else:
        ev = _load_hf_split(cfg, eval_split).shuffle(seed=seed + 1)
        ev = ev.select(range(min(n_eval, len(ev))))
    if n_train is not None:
        train = train.select(range(min(int(n_train), len(train))))
    return OfflineData(train=_to_records(train, fmt, cfg, where(train_split)),
                       eval=_to_records(ev, fmt, cfg, where(eval_split or train_split)))


OFFLINE_SOURCES = {"tiny_reviews": _tiny_reviews_records, "hf": _hf_records, "files": _hf_records}


def load_offline_data(cfg: Mapping[str, Any], fmt: str) -> OfflineData:
    """Train and held-out records in format ``fmt`` (see ``OFFLINE_FORMATS``) from the ``dataset`` config group.

    Sizes: ``dataset.offline_train_size`` (null = the whole split) and ``dataset.offline_eval_size``.
    """
    if fmt not in OFFLINE_FORMATS:
        raise ValueError(f"Unknown offline data format {fmt!r}. Valid: {', '.join(OFFLINE_FORMATS)}.")
    kind = cfg.get("kind")
    if kind not in OFFLINE_SOURCES:
        raise DatasetError(f"Unknown dataset.kind {kind!r}. Valid: {', '.join(OFFLINE_SOURCES)}.")
    data = OFFLINE_SOURCES[kind](cfg, fmt)
    if not data.train or not data.eval:
        raise DatasetError(f"dataset {cfg.get('name', kind)!r} gave {len(data.train)} train and {len(data.eval)} "
                           f"held-out {fmt} records; both must be non-empty.")
    return data


def offline_eval_prompts(cfg: Mapping[str, Any], tokenizer, records: Sequence[Mapping[str, Any]]) -> list[Prompt]:
    """The held-out prompts on which an offline run's policy is evaluated.

    The embedded task uses exactly the online eval prompts (so offline and online runs are scored on the same
    prompts). Other sources use the distinct prompts of the held-out records, cut like online prompts.
    """
    if cfg.get("kind") == "tiny_reviews":
        # The eval prompts are their own stream: they do not depend on train_size (1 skips making train prompts).
        return load_prompt_data({**dict(cfg), "train_size": 1}, tokenizer).eval
    seen, rows = set(), []
    use_texts = not any(r.get("prompt") for r in records)   # plain-text SFT: evaluate on prefixes of the texts
    if use_texts and (cfg.get("prompt_min_tokens") is None or cfg.get("prompt_max_tokens") is None):
        raise DatasetError(f"dataset {cfg.get('name')!r}: the held-out records have no prompts to evaluate the "
                           f"policy on (plain-text SFT data). Set dataset.prompt_min_tokens and "
                           f"dataset.prompt_max_tokens to evaluate on prefixes of the held-out texts.")
    for r in records:
        p = r.get("completion" if use_texts else "prompt") or ""
        if p and p not in seen:
            seen.add(p)
            rows.append({"text": p})
    return _from_texts(tokenizer, rows, "text", int(cfg.get("eval_size", 128)), int(cfg.get("seed", 0)) + 1, cfg)
