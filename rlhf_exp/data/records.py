"""Records for the offline objectives (SFT, reward modelling, DPO, KTO) in the format each asks for."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from rlhf_exp.data.chat import _cell, render_conversations
from rlhf_exp.data.sources import _check_column, _null_notice, _train_eval
from rlhf_exp.data.types import DatasetError, OfflineData


# format -> (required record fields, optional record fields)
OFFLINE_FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sft": (("completion",), ("prompt",)),
    "preference": (("chosen", "rejected"), ("prompt", "margin")),
    "unpaired": (("prompt", "completion", "label"), ()),
}
RECORD_FIELDS = ("prompt", "completion", "text", "messages", "chosen", "rejected", "label", "margin")




def _tiny_reviews_records(cfg: Mapping[str, Any], fmt: str) -> OfflineData:
    from rlhf_exp.task import reviews

    seed = int(cfg["seed"])
    n_train, n_eval = int(cfg["offline_train_size"]), int(cfg["offline_eval_size"])
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


def common_prefix_messages(chosen: Sequence[Mapping[str, str]], rejected: Sequence[Mapping[str, str]]
                           ) -> tuple[list, list, list]:
    """Split an implicit-prompt conversational pair (``trl-lib/ultrafeedback_binarized``: two whole conversations)
    into the shared messages (the prompt) and the two replies."""
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    return list(chosen[:n]), list(chosen[n:]), list(rejected[n:])


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


def _record_source(found: Sequence[str], fmt: str, cols: Mapping[str, Optional[str]]) -> str:
    """Where SFT records come from: ``completion`` (prompt/completion), ``messages`` (whole conversations) or
    ``text`` (plain texts, no prompt); the other formats read their own fields."""
    if fmt != "sft" or (cols["completion"] is not None and cols["completion"] in found):
        return "completion"
    for source in ("messages", "text"):
        if cols[source] is not None and cols[source] in found:
            return source
    return "completion"


def _check_record_columns(found: Sequence[str], fmt: str, cols: Mapping[str, Optional[str]], where: str
                          ) -> tuple[str, list[str]]:
    """Check that the dataset has the columns the format needs. Returns the SFT source (see :func:`_record_source`)
    and the record fields to read. An optional field (a preference prompt, a margin, an SFT prompt) is read when its
    column is there; mapped to another name (``dataset.columns.prompt=question``), that column must be there."""
    required, optional = OFFLINE_FORMATS[fmt]
    source = _record_source(found, fmt, cols)
    if source != "completion":
        need, fields = [source], [source]
    else:
        need = list(required)
        fields = list(required) + [f for f in optional if cols[f] is not None and (cols[f] in found or cols[f] != f)]
        need += fields[len(required):]
    for f in need:
        if cols[f] is None:
            raise DatasetError(f"objective needs a {f!r} column but dataset.columns.{f} is null.")
        _check_column(found, cols[f], where, option=f"dataset.columns.{f}")
    return source, fields


def _to_records(rows, fmt: str, cfg: Mapping[str, Any], where: str,
                row_ids: Optional[Sequence[int]] = None) -> list[dict[str, Any]]:
    """Records of format ``fmt`` from the dataset rows. Text cells stay strings; conversation cells stay lists of
    messages (the record gets ``chat: True``; :func:`render_conversations` renders them). Rows with a null cell in
    a used column are dropped (a notice counts them)."""
    cols = _columns(cfg)
    source, fields = _check_record_columns(list(rows.column_names), fmt, cols, where)
    delimiter = cfg.get("prompt_delimiter")
    out, nulls, null_cols = [], [], []
    for i, row in enumerate(rows):
        row_id = row_ids[i] if row_ids is not None else i
        rw = f"{where}, row {row_id}"
        missing = [cols[f] for f in fields if row[cols[f]] is None and not (f == "prompt" and fmt == "sft")]
        if missing:
            nulls.append(row_id)
            null_cols += missing
            continue
        v = {f: _cell(row[cols[f]], cols[f], rw) for f in fields if row[cols[f]] is not None}
        chat = any(isinstance(x, list) for x in v.values())
        texts = [f for f in ("prompt", "completion", "chosen", "rejected", "messages") if f in v]
        if chat and any(isinstance(v[f], str) for f in texts if not (f == "prompt" and v[f] == "")):
            kinds = ", ".join(f"{cols[f]}: {'conversation' if isinstance(v[f], list) else 'text'}" for f in texts)
            raise DatasetError(f"{rw}: some columns are conversations and some plain text ({kinds}); give all of "
                               f"them in one form.")
        if fmt == "sft":
            if source == "text":
                rec = {"prompt": "", "completion": v["text"]}
            elif source == "messages":
                rec = {"messages": v["messages"]}
            else:
                rec = {"prompt": v.get("prompt") or ("" if not chat else []), "completion": v["completion"]}
        elif fmt == "preference":
            chosen, rejected, prompt = v["chosen"], v["rejected"], v.get("prompt")
            if prompt is None:
                split = common_prefix_messages if chat else (lambda c, r: common_prefix_prompt(c, r, delimiter))
                prompt, chosen, rejected = split(chosen, rejected)
            elif not chat and chosen.startswith(prompt) and rejected.startswith(prompt):  # completions repeat it
                chosen, rejected = chosen[len(prompt):], rejected[len(prompt):]
            rec = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            if "margin" in fields:
                rec["margin"] = float(row[cols["margin"]])
        else:
            rec = {"prompt": v["prompt"], "completion": v["completion"], "label": _as_label(row[cols["label"]], rw)}
        if chat:
            rec.update(chat=True, row=row_id)
        out.append(rec)
    _null_notice(nulls, null_cols, where)
    return out


def _hf_records(cfg: Mapping[str, Any], fmt: str) -> OfflineData:
    seed = int(cfg["seed"])
    n_train, n_eval = cfg["offline_train_size"], int(cfg["offline_eval_size"])
    cols = _columns(cfg)                    # config errors first, before any loading
    (train, train_rows, w_train), (ev, ev_rows, w_eval) = _train_eval(
        cfg, n_eval, seed, lambda found, where: _check_record_columns(list(found), fmt, cols, where))
    ev, ev_rows = ev.select(range(min(n_eval, len(ev)))), ev_rows[:n_eval]
    if n_train is not None:
        train, train_rows = train.select(range(min(int(n_train), len(train)))), train_rows[:int(n_train)]
    return OfflineData(train=_to_records(train, fmt, cfg, w_train, train_rows),
                       eval=_to_records(ev, fmt, cfg, w_eval, ev_rows))


OFFLINE_SOURCES = {"tiny_reviews": _tiny_reviews_records, "hf": _hf_records, "files": _hf_records}


def load_offline_data(cfg: Mapping[str, Any], fmt: str, tokenizer=None) -> OfflineData:
    """Train and held-out records in format ``fmt`` (see ``OFFLINE_FORMATS``) from the ``dataset`` config group.

    Sizes: ``dataset.offline_train_size`` (null = the whole split) and ``dataset.offline_eval_size``. Conversational
    records are rendered with ``tokenizer``'s chat template (:func:`render_conversations`); without a tokenizer they
    keep their messages.
    """
    if fmt not in OFFLINE_FORMATS:
        raise ValueError(f"Unknown offline data format {fmt!r}. Valid: {', '.join(OFFLINE_FORMATS)}.")
    kind = cfg.get("kind")
    if kind not in OFFLINE_SOURCES:
        raise DatasetError(f"Unknown dataset.kind {kind!r}. Valid: {', '.join(OFFLINE_SOURCES)}.")
    data = OFFLINE_SOURCES[kind](cfg, fmt)
    if not data.train or not data.eval:
        raise DatasetError(f"dataset {cfg['name']!r} gave {len(data.train)} train and {len(data.eval)} "
                           f"held-out {fmt} records; both must be non-empty.")
    if tokenizer is not None:
        where = f"dataset {cfg['name']}"
        data = OfflineData(render_conversations(data.train, tokenizer, where),
                           render_conversations(data.eval, tokenizer, where))
    return data
