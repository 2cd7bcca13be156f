"""Online prompts: the train and held-out eval :class:`~rlhf_exp.data.types.Prompt` lists of a dataset source."""
from __future__ import annotations

import random
from typing import Any, Mapping, Optional, Sequence

from rlhf_exp.data.chat import _cell, _render, _require_chat_template, chat_prompt_text
from rlhf_exp.data.sources import DatasetError, _check_column, _null_notice, _train_eval
from rlhf_exp.data.types import Prompt, PromptData


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
                cfg: Mapping[str, Any], where: str = "dataset", row_ids: Optional[Sequence[int]] = None
                ) -> list[Prompt]:
    """Prompts from ``column`` of the rows: plain text is cut (see :func:`_cut`), conversations are rendered; rows
    with a null prompt are dropped (a notice counts them)."""
    rng = random.Random(seed)
    out: list[Prompt] = []
    nulls = []
    for i, row in enumerate(rows):
        row_id = row_ids[i] if row_ids is not None else i
        value = row[column]
        if value is None:
            nulls.append(row_id)
            continue
        value = _cell(value, column, f"{where}, row {row_id}")
        p = (_chat_prompt(tokenizer, value, cfg, f"{where}, row {row_id}, column {column!r}")
             if isinstance(value, list) else _cut(tokenizer, value, rng, cfg))
        if p is None:
            continue
        p.columns = {k: v for k, v in row.items() if k != column}
        out.append(p)
        if n is not None and len(out) >= n:
            break
    _null_notice(nulls, [column], where)
    return out


def _tiny_reviews(cfg: Mapping[str, Any], tokenizer) -> PromptData:
    from rlhf_exp.task import reviews

    seed = int(cfg["seed"])
    n_train, n_eval = int(cfg["train_size"]), int(cfg["eval_size"])
    train_rows = [{"text": r.text, "label": r.label} for r in reviews.split_reviews("prompts_train", n_train, seed)]
    eval_rows = [{"text": r.text, "label": r.label} for r in reviews.split_reviews("prompts_eval", 2 * n_eval, seed)]
    return PromptData(
        train=_from_texts(tokenizer, train_rows, "text", n_train, seed, cfg),
        eval=_from_texts(tokenizer, eval_rows, "text", n_eval, seed + 1, cfg),
    )


def _hf(cfg: Mapping[str, Any], tokenizer) -> PromptData:
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
                          train_rows),
        eval=_from_texts(tokenizer, ev, column, n_eval, seed + 1, cfg, w_eval, ev_rows))


SOURCES = {"tiny_reviews": _tiny_reviews, "hf": _hf, "files": _hf}


def load_prompt_data(cfg: Mapping[str, Any], tokenizer) -> PromptData:
    """Build the train and eval prompts described by the ``dataset`` config group."""
    kind = cfg.get("kind")
    if kind not in SOURCES:
        raise DatasetError(f"Unknown dataset.kind {kind!r}. Valid: {', '.join(SOURCES)}.")
    data = SOURCES[kind](cfg, tokenizer)
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
