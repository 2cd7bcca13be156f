"""Online prompts: the train and held-out eval :class:`~rlhf_exp.data.types.Prompt` lists of a dataset source."""
from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from rlhf_exp.data.chat import _cell, _render, _require_chat_template, chat_prompt_text
from rlhf_exp.data.sources import DatasetError, _check_column, _null_notice, _train_eval
from rlhf_exp.data.types import Prompt, PromptData


PROGRESS_MIN_ROWS = 1000   # a progress bar (stderr) when at least this many rows are made into prompts
PROGRESS_DELAY_S = 3.0     #   and it takes longer than this (the embedded task's 8192 prompts take 1-3 s: no bar)
TOKENIZE_CHUNK = 512       # rows tokenized in one batch call (the fast tokenizers' batch path)


@dataclass(frozen=True)
class PromptLimit:
    """The longest prompt the run can use (``max_tokens``) and why (for the message), checked as each prompt is made:
    a too-long prompt fails at once, naming its row, not after the whole data set is prepared."""

    max_tokens: int
    why: str


def prompt_limit(positions: Optional[int], max_new_tokens: int, model_option: str) -> Optional[PromptLimit]:
    """The limit a model of ``positions`` positions sets when ``max_new_tokens`` of them are kept for the response
    (None: the model has no position limit)."""
    if positions is None:
        return None
    return PromptLimit(int(positions) - int(max_new_tokens),
                       f"the {positions} positions of {model_option} less generation.max_new_tokens={max_new_tokens} "
                       f"leave {int(positions) - int(max_new_tokens)} for a prompt")


def _cut(tokenizer, text: str, rng: random.Random, cfg: Mapping[str, Any],
         ids: Optional[list[int]] = None) -> Optional[Prompt]:
    if ids is None:
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


def _chat_prompt(tokenizer, messages: Sequence[Mapping[str, str]], cfg: Mapping[str, Any], where: str) -> Prompt:
    """A conversational prompt: the conversation in the chat template, then the opening of the assistant's turn.
    ``text`` is that rendered string (what rewards see); ``max_prompt_tokens`` keeps its last tokens."""
    _require_chat_template(tokenizer, f"{where}: the prompts are conversations (lists of role/content messages)")
    if messages[-1]["role"] == "assistant":
        raise DatasetError(f"{where}: the prompt conversation ends with an assistant turn; a prompt ends with the turn "
                           f"the policy replies to.")
    text = _render(tokenizer, messages, True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if cfg.get("max_prompt_tokens"):
        ids = ids[-int(cfg["max_prompt_tokens"]):]
        text = tokenizer.decode(ids)
    return Prompt(ids=ids, text=text)


def _from_texts(tokenizer, rows: Sequence[Mapping[str, Any]], column: str, n: Optional[int], seed: int,
                cfg: Mapping[str, Any], where: str = "dataset", row_ids: Optional[Sequence[int]] = None,
                limit: Optional[PromptLimit] = None) -> list[Prompt]:
    """Prompts from ``column`` of the rows: plain text is cut (see :func:`_cut`), conversations are rendered; rows
    with a null prompt are dropped (a notice counts them). Plain texts are tokenized in batches of
    :data:`TOKENIZE_CHUNK` rows; a progress bar shows on stderr from :data:`PROGRESS_MIN_ROWS` rows once it has
    taken :data:`PROGRESS_DELAY_S` seconds; a prompt longer than ``limit`` fails at once."""
    rng = random.Random(seed)
    out: list[Prompt] = []
    nulls = []
    total = len(rows) if n is None else min(int(n), len(rows))
    bar = None
    if total >= PROGRESS_MIN_ROWS and int(os.environ.get("RANK", "0")) == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="[rlhf_exp] preparing prompts", unit=" prompts", file=sys.stderr,
                   mininterval=1.0, delay=PROGRESS_DELAY_S, leave=False, dynamic_ncols=True)
    try:
        for start in range(0, len(rows), TOKENIZE_CHUNK):
            chunk = []
            for i in range(start, min(start + TOKENIZE_CHUNK, len(rows))):
                row = rows[i]
                row_id = row_ids[i] if row_ids is not None else i
                value = row[column]
                if value is None:
                    nulls.append(row_id)
                    continue
                chunk.append((i, row_id, row, _cell(value, column, f"{where}, row {row_id}")))
            texts = [v for _, _, _, v in chunk if isinstance(v, str)]
            encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
            for i, row_id, row, value in chunk:
                p = (_chat_prompt(tokenizer, value, cfg, f"{where}, row {row_id}, column {column!r}")
                     if isinstance(value, list) else _cut(tokenizer, value, rng, cfg, next(encoded)))
                if p is None:
                    continue
                if limit is not None and len(p.ids) > limit.max_tokens:
                    raise DatasetError(
                        f"{where}, row {row_id}: the prompt is {len(p.ids)} tokens long, but {limit.why}. Shorten the "
                        f"prompts (dataset.max_prompt_tokens={max(limit.max_tokens, 1)} keeps their last tokens; for "
                        f"dataset=tiny_reviews dataset.prompt_max_tokens) or lower generation.max_new_tokens. (Found "
                        f"at row {i + 1} of {len(rows)}.)")
                p.columns = {k: v for k, v in row.items() if k != column}
                out.append(p)
                if n is not None and len(out) >= n:
                    break
            if bar is not None:
                bar.update(min(len(chunk), total - bar.n))
            if n is not None and len(out) >= n:
                break
    finally:
        if bar is not None:
            bar.close()
    _null_notice(nulls, [column], where)
    return out


def _tiny_reviews(cfg: Mapping[str, Any], tokenizer, limit: Optional[PromptLimit] = None) -> PromptData:
    from rlhf_exp.task import reviews

    seed = int(cfg["seed"])
    n_train, n_eval = int(cfg["train_size"]), int(cfg["eval_size"])
    train_rows = [{"text": r.text, "label": r.label} for r in reviews.split_reviews("prompts_train", n_train, seed)]
    eval_rows = [{"text": r.text, "label": r.label} for r in reviews.split_reviews("prompts_eval", 2 * n_eval, seed)]
    return PromptData(
        train=_from_texts(tokenizer, train_rows, "text", n_train, seed, cfg, "dataset tiny_reviews (train)",
                          limit=limit),
        eval=_from_texts(tokenizer, eval_rows, "text", n_eval, seed + 1, cfg, "dataset tiny_reviews (eval)",
                         limit=limit),
    )


def _hf(cfg: Mapping[str, Any], tokenizer, limit: Optional[PromptLimit] = None) -> PromptData:
    column = cfg["prompt_column"]
    seed = int(cfg["seed"])
    n_train, n_eval = cfg["train_size"], int(cfg["eval_size"])

    def check(found: Sequence[str], where: str) -> None:
        if column is None:
            raise DatasetError(f"{where}: online runs read their prompts from dataset.prompt_column, which is null. "
                               f"Set it to one of: {', '.join(found)}.")
        _check_column(found, column, where)

    (train, train_rows, w_train), (ev, ev_rows, w_eval) = _train_eval(cfg, n_eval, seed, check)
    return PromptData(
        train=_from_texts(tokenizer, train, column, None if n_train is None else int(n_train), seed, cfg, w_train,
                          train_rows, limit),
        eval=_from_texts(tokenizer, ev, column, n_eval, seed + 1, cfg, w_eval, ev_rows, limit))


SOURCES = {"tiny_reviews": _tiny_reviews, "hf": _hf, "files": _hf}


def load_prompt_data(cfg: Mapping[str, Any], tokenizer, limit: Optional[PromptLimit] = None) -> PromptData:
    """Build the train and eval prompts described by the ``dataset`` config group; a prompt longer than ``limit``
    (:func:`prompt_limit`) fails as soon as it is made."""
    kind = cfg.get("kind")
    if kind not in SOURCES:
        raise DatasetError(f"Unknown dataset.kind {kind!r}. Valid: {', '.join(SOURCES)}.")
    data = SOURCES[kind](cfg, tokenizer, limit)
    if not data.train:
        raise DatasetError(f"dataset {cfg['name']!r} produced no training prompts; check its columns and "
                           f"prompt length settings.")
    if not data.eval:
        raise DatasetError(f"dataset {cfg['name']!r} produced no eval prompts.")
    return data


def offline_eval_prompts(cfg: Mapping[str, Any], tokenizer, records: Sequence[Mapping[str, Any]]) -> list[Prompt]:
    """The held-out prompts on which an offline run's policy is evaluated.

    The embedded task uses exactly the online eval prompts (so offline and online runs are scored on the same
    prompts). Other sources use the distinct prompts of the held-out records, cut like online prompts (rendered
    conversations are only left-truncated to ``max_prompt_tokens``).
    """
    if cfg.get("kind") == "tiny_reviews":
        # The eval prompts are their own stream: they do not depend on train_size (1 skips making train prompts).
        return load_prompt_data({**dict(cfg), "train_size": 1}, tokenizer).eval
    if any(r.get("chat") for r in records):
        cfg = {**dict(cfg), "chat_template": False, "prompt_min_tokens": None, "prompt_max_tokens": None}
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
    return _from_texts(tokenizer, rows, "text", int(cfg["eval_size"]), int(cfg["seed"]) + 1, cfg)
