"""Datasets: prompts for the online objectives, and records for the offline ones (SFT, reward modelling, DPO, KTO).

Online: every source ends as two lists of :class:`Prompt` (train and a fixed, held-out eval set): token ids for the
policy, the decoded text for rewards and logs, and any extra dataset columns (passed on to reward functions).

Offline (:func:`load_offline_data`): the same sources give train and held-out lists of plain records in the format
the objective asks for (``OFFLINE_FORMATS``): ``sft`` {prompt, completion}, ``preference`` {prompt, chosen,
rejected[, margin]}, ``unpaired`` {prompt, completion, label}. ``dataset.columns`` maps these names to the
dataset's own columns.

Sources (``dataset.kind``):
* ``tiny_reviews``: the embedded review generator (no download).
* ``hf``: a Hugging Face dataset (``dataset.path``): a hub id (``dataset.config_name`` picks the hub config, and
  ``dataset.data_dir`` a sub-folder), a folder written by ``huggingface-cli download <id> --repo-type dataset
  --local-dir DIR`` (the repo's README ``configs:`` and data files), or a folder written by ``save_to_disk``.
* ``files``: local jsonl/json/csv/parquet files with a column mapping.

With ``eval_split: null`` the first ``eval_size`` (online) or ``offline_eval_size`` (offline) rows of the shuffled
train split are held out. Rows with a null cell in a column that is used are dropped (with a notice that counts
them). Data files that cannot be read (empty, malformed, not UTF-8) are an error naming the file and line.

With ``prompt_min_tokens``/``prompt_max_tokens`` set, each text is cut to a random number of leading tokens in that
range (the IMDb "review prefix" recipe); otherwise the whole column is the prompt, left-truncated to
``max_prompt_tokens``. With ``chat_template: true`` (instruct models) the cut text becomes the user's turn in the
tokenizer's chat template, ending with the opening of the assistant's turn; ``Prompt.text`` stays the plain text
(what rewards and logs see).

Conversational data (TRL's format: ``prompt``, ``completion``, ``chosen``, ``rejected`` or ``messages`` cells that
are lists of ``{"role", "content"}`` messages) is rendered with the policy tokenizer's chat template: an online
prompt becomes the conversation followed by the opening of the assistant's turn, an offline record becomes the
rendered prompt and the rendered assistant turns (:func:`render_conversations`); rewards see the rendered text. A
list- or dict-valued cell that is not a conversation is an error naming the column.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence


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


def _require_chat_template(tokenizer, why: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DatasetError(f"{why}, but the policy's tokenizer has no chat template (a base model's usually has "
                           f"none). Use an instruct model's tokenizer (model.tokenizer=<a tokenizer folder with a chat "
                           f"template>, or a model.path whose tokenizer has one)" +
                           (", or set dataset.chat_template=false to use the plain prompt text." if "chat_template"
                            in why else ", or give the data as plain text."))


def chat_prompt_text(tokenizer, text: str) -> str:
    """``text`` as the user's turn of the tokenizer's chat template, followed by the opening of the assistant's turn
    (the string the policy continues; tokenise it with ``add_special_tokens=False``)."""
    _require_chat_template(tokenizer, "dataset.chat_template=true")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def chat_records(records: Sequence[Mapping[str, Any]], tokenizer) -> list[dict[str, Any]]:
    """Offline records with each non-empty ``prompt`` put in the chat template (see :func:`chat_prompt_text`).
    Records rendered from conversations (``chat: True``) are already in the template and stay as they are."""
    return [{**r, "prompt": chat_prompt_text(tokenizer, r["prompt"])} if r.get("prompt") and not r.get("chat")
            else dict(r) for r in records]


# ---------------------------------------------------------------------------------------------------------------
# Conversations (TRL's conversational format)
# ---------------------------------------------------------------------------------------------------------------

def is_conversation(value: Any) -> bool:
    """A non-empty list of ``{"role": str, "content": str, ...}`` messages."""
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(m, Mapping) and isinstance(m.get("role"), str) and "content" in m for m in value))


def _cell(value: Any, column: str, where: str) -> Any:
    """A cell as a string, or as a list of messages when it is a conversation; any other list or dict is an error
    (it would otherwise train on its Python repr)."""
    if is_conversation(value):
        return [{"role": m["role"], "content": "" if m["content"] is None else str(m["content"])} for m in value]
    if isinstance(value, (list, tuple, dict)):
        shown = repr(value)
        raise DatasetError(f"{where}, column {column!r}: the cell is a {type(value).__name__} ({shown[:80]}"
                           f"{'...' if len(shown) > 80 else ''}), neither text nor a conversation (a list of "
                           f"{{\"role\": ..., \"content\": ...}} messages). Map dataset.columns / "
                           f"dataset.prompt_column to a text column, or convert the column to text or to "
                           f"conversations.")
    return value if isinstance(value, str) else str(value)


def _render(tokenizer, messages: Sequence[Mapping[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def _strip_after_eos(text: str, eos: Optional[str]) -> str:
    """Drop what the template writes after the final end-of-turn EOS (a newline): generation stops at the EOS."""
    stripped = text.rstrip()
    return stripped if eos and stripped.endswith(eos) else text


def render_turns(tokenizer, messages: Sequence[Mapping[str, str]], where: str) -> tuple[str, list[tuple[str, bool]]]:
    """A conversation as the rendered text before its first assistant turn (ending with the opening of that turn)
    and the rest as ``(text, is_assistant)`` parts, so that a loss can be put on the assistant's tokens only.

    Each assistant part is what the template adds for that turn (content and end-of-turn marker); the parts between
    are the other turns with the opening of the next assistant turn. Turns after the last assistant turn are dropped.
    """
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant:
        raise DatasetError(f"{where}: the conversation has no assistant turn (roles: "
                           f"{', '.join(m['role'] for m in messages)}), so there is nothing to train on. Each "
                           f"conversation needs a {{\"role\": \"assistant\", ...}} message.")
    if assistant[0] == 0:
        raise DatasetError(f"{where}: the conversation starts with the assistant's turn; it needs a prompt (a user or "
                           f"system turn) before it.")
    prompt = done = _render(tokenizer, messages[:assistant[0]], True)
    parts: list[tuple[str, bool]] = []
    for i in assistant:
        before = _render(tokenizer, messages[:i], True)
        full = _render(tokenizer, messages[:i + 1], False)
        if not before.startswith(done) or not full.startswith(before):
            raise DatasetError(f"{where}: the policy tokenizer's chat template does not render this conversation "
                               f"turn by turn (a prefix of the conversation renders differently inside the whole), "
                               f"so the assistant's tokens cannot be told apart. Use a template that renders "
                               f"prefixes consistently.")
        if len(before) > len(done):
            parts.append((before[len(done):], False))
        parts.append((full[len(before):], True))
        done = full
    text, _ = parts[-1]
    parts[-1] = (_strip_after_eos(text, tokenizer.eos_token), True)
    return prompt, parts


def render_completion(tokenizer, prompt: Sequence[Mapping[str, str]], completion: Sequence[Mapping[str, str]],
                      column: str, where: str) -> tuple[str, str]:
    """The rendered prompt (ending with the opening of the assistant's turn) and the rendered assistant completion
    that follows it in the rendered ``prompt + completion`` conversation."""
    roles = [m["role"] for m in completion]
    if "assistant" not in roles:
        raise DatasetError(f"{where}, column {column!r}: the completion has no assistant turn (roles: "
                           f"{', '.join(roles)}); it must be the assistant's reply to the prompt.")
    if any(r != "assistant" for r in roles):
        raise DatasetError(f"{where}, column {column!r}: the completion holds a turn that is not the assistant's "
                           f"(roles: {', '.join(roles)}); put the conversation before the reply in the prompt.")
    if not prompt:
        raise DatasetError(f"{where}: the conversation has no turn before the assistant's reply (no prompt).")
    if prompt[-1]["role"] == "assistant":
        raise DatasetError(f"{where}: the prompt conversation ends with an assistant turn; it should end with the turn "
                           f"the completion replies to.")
    p = _render(tokenizer, prompt, True)
    full = _render(tokenizer, list(prompt) + list(completion), False)
    if not full.startswith(p):
        raise DatasetError(f"{where}: the policy tokenizer's chat template renders the prompt differently inside the "
                           f"whole conversation, so the assistant's reply cannot be told apart. Use a template that "
                           f"renders prefixes consistently.")
    return p, _strip_after_eos(full[len(p):], tokenizer.eos_token)


def render_conversations(records: Sequence[Mapping[str, Any]], tokenizer, where: str) -> list[dict[str, Any]]:
    """Offline records whose cells are conversations, rendered with the tokenizer's chat template.

    ``prompt`` becomes the rendered prompt (ending with the opening of the assistant's turn), ``completion`` /
    ``chosen`` / ``rejected`` the rendered assistant reply, and an SFT ``messages`` conversation becomes
    ``prompt`` (everything before the first assistant turn) plus ``completion_parts`` (``(text, is_assistant)``:
    the SFT loss is on the assistant parts only) and their joined ``completion``. Rendered records carry
    ``chat: True``; plain-text records pass through unchanged.
    """
    out = []
    for r in records:
        if not r.get("chat"):
            out.append(dict(r))
            continue
        if not getattr(tokenizer, "chat_template", None):
            _require_chat_template(tokenizer, f"{where}: the data is conversational (lists of role/content messages)")
        rw = f"{where}, row {r.get('row', '?')}"
        rec = {k: v for k, v in r.items() if k not in ("prompt", "completion", "chosen", "rejected", "messages")}
        if "messages" in r:
            rec["prompt"], parts = render_turns(tokenizer, r["messages"], f"{rw}, column 'messages'")
            rec["completion_parts"] = parts
            rec["completion"] = "".join(t for t, _ in parts)
        else:
            for key in ("completion", "chosen", "rejected"):
                if key in r:
                    rec["prompt"], rec[key] = render_completion(tokenizer, r["prompt"], r[key], key, rw)
        out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Online prompts
# ---------------------------------------------------------------------------------------------------------------

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


def _null_notice(rows: Sequence[int], columns: Sequence[str], where: str) -> None:
    if rows:
        shown = ", ".join(str(r) for r in sorted(rows)[:8]) + (" ..." if len(rows) > 8 else "")
        print(f"[rlhf_exp] {where}: dropped {len(rows)} row(s) with an empty (null) cell in column(s) "
              f"{', '.join(dict.fromkeys(columns))} ({'rows' if len(rows) > 1 else 'row'} {shown}).", flush=True)


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


# ---------------------------------------------------------------------------------------------------------------
# Where a dataset is: a hub id, a `huggingface-cli download --local-dir` folder, a save_to_disk folder, local files
# ---------------------------------------------------------------------------------------------------------------

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".csv", ".tsv", ".txt")


def _suffix(path: Path) -> tuple[str, bool]:
    """The data suffix of a file name and whether it is gzipped (``x.jsonl.gz`` -> ``(".jsonl", True)``)."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    if gz:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), gz


def _files_builder(files: Mapping[str, Any]) -> str:
    """The ``datasets`` builder (json | csv | parquet) for local files, from their extension."""
    names = [one for f in files.values() for one in ([f] if isinstance(f, str) else list(f))]
    kinds = {_BUILDERS.get(_suffix(Path(n))[0]) for n in names}
    if None in kinds or len(kinds) != 1:
        raise DatasetError(f"dataset.data_files {names}: cannot tell the format from the extensions (want one of "
                           f"{', '.join(_BUILDERS)}, all the same); set dataset.path=json|csv|parquet.")
    return kinds.pop()


def file_problem(path: Path, check_rows: bool = True) -> Optional[str]:
    """What makes a data file unreadable, in words that name the line, or None.

    Always checked: missing, empty (0 bytes), not gzip when named ``.gz``, text formats (json/jsonl/csv) not UTF-8.
    With ``check_rows``: no rows, a JSON line that does not parse or is not an object, a CSV row with a different
    number of fields than its header, a parquet file that does not open.
    """
    path = Path(path)
    if not path.exists():
        return "does not exist"
    if path.stat().st_size == 0:
        return "is empty (0 bytes)"
    suffix, gz = _suffix(path)
    if suffix == ".parquet":
        if not check_rows:
            return None
        import pyarrow.parquet as pq

        try:
            rows = pq.read_metadata(path).num_rows
        except Exception as e:  # noqa: BLE001  (pyarrow raises several types)
            return f"is not a readable parquet file ({e})"
        return "has no rows" if rows == 0 else None
    if suffix not in (".jsonl", ".json", ".csv"):
        return None
    try:
        raw = gzip.open(path).read() if gz else path.read_bytes()
    except OSError as e:
        return f"cannot be read as gzip ({e})"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        return (f"is not UTF-8 text: line {line} has the byte 0x{raw[e.start]:02x}. Re-save it as UTF-8 (for a "
                f"Latin-1 file: iconv -f latin1 -t utf-8 {path.name} > fixed{''.join(path.suffixes)})")
    if not check_rows:
        return None
    if not text.strip():
        return "has no rows (only whitespace)"
    if suffix == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        if len(rows) < 2:
            return "has no rows (only a header line)"
        for i, row in enumerate(rows[1:], start=2):
            if row and len(row) != len(rows[0]):
                return (f"line {i} has {len(row)} fields but the header has {len(rows[0])} (quote fields that "
                        f"contain commas)")
        return None
    if suffix == ".json" and text.lstrip()[:1] == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            return f"is not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}"
        return "has no rows (an empty JSON list)" if not data else None
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if suffix == ".json" and i == 1:    # one JSON document over several lines
                try:
                    json.loads(text)
                    return None
                except json.JSONDecodeError as e2:
                    return f"is not valid JSON: line {e2.lineno}, column {e2.colno}: {e2.msg}"
            return f"line {i} (row {i - 1}) is not valid JSON: {e.msg} (column {e.colno}); one object per line"
        if not isinstance(obj, dict):
            return f"line {i} (row {i - 1}) is a JSON {type(obj).__name__}, not an object {{\"column\": value, ...}}"
    return None


def _data_files_under(folder: Path) -> list[Path]:
    """The data files of a downloaded repo folder (hidden folders such as ``.cache`` left out)."""
    out = []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).parts
        if f.is_file() and not any(p.startswith((".", "__")) for p in rel) and _suffix(f)[0] in _DATA_SUFFIXES:
            out.append(f)
    return out


def _first_file_problem(files: Sequence[Path]) -> Optional[str]:
    for f in files:
        problem = file_problem(f)
        if problem:
            return f"{f} {problem}"
    return None


def _given_files(cfg: Mapping[str, Any]) -> dict[str, list[str]]:
    files = cfg.get("data_files")
    if not files:
        raise DatasetError("dataset.kind=files needs dataset.data_files (a path, a list of paths, or "
                           "{train: ..., test: ...}).")
    files = dict(files) if isinstance(files, Mapping) else {"train": files}
    out = {str(k): [str(f)] if isinstance(f, (str, Path)) else [str(x) for x in f] for k, f in files.items()}
    for one in (x for fs in out.values() for x in fs):
        if not Path(one).exists():
            raise DatasetError(f"dataset.data_files: {one} does not exist.")
    return out


def _looks_like_path(path: str) -> bool:
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path


def _download_hint(hub_id: str, config_name: Optional[str]) -> str:
    conf = f", '{config_name}'" if config_name else ""
    return (f"On a machine with internet run `huggingface-cli download {hub_id} --repo-type dataset --local-dir DIR` "
            f"(or `python -c \"import datasets; datasets.load_dataset('{hub_id}'{conf}).save_to_disk('DIR')\"`), "
            f"copy DIR here and set dataset.path=DIR (or use dataset=files with dataset.data_files=...).")


def _load_dataset(path: str, cfg: Mapping[str, Any], where: str, files: Sequence[Path]):
    """``datasets.load_dataset`` of a hub id or a downloaded repo folder (all splits of ``dataset.config_name``),
    with its errors turned into ones that name the option or the file."""
    import datasets

    config_name, data_dir = cfg.get("config_name"), cfg.get("data_dir")
    try:
        return datasets.load_dataset(path, config_name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001  (datasets raises many types; keep the cause and say what was asked for)
        text = f"{type(e).__name__}: {e}"
        if "BuilderConfig" in str(e) or "Config name is missing" in str(e):
            raise DatasetError(f"{where}: dataset.config_name={config_name} is not one of its configs ({e}). Set "
                               f"dataset.config_name=<one of them> (null: the default one).") from e
        if isinstance(e, FileNotFoundError) and files is not None and Path(path).is_dir():
            raise DatasetError(f"{where} holds no data files{f' under dataset.data_dir={data_dir}' if data_dir else ''}"
                               f". Give the folder that `huggingface-cli download <id> --repo-type dataset "
                               f"--local-dir DIR` wrote (README.md and the data files), or one written by "
                               f"save_to_disk, or use dataset=files with dataset.data_files=... ({text})") from e
        problem = _first_file_problem(files) if files else None
        if problem:
            raise DatasetError(f"{where}: {problem}.") from e
        raise DatasetError(f"{where} could not be loaded: {text}") from e


def load_splits(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Every split of the dataset the ``dataset`` config points at, and a description of it for messages.

    ``files``: ``dataset.data_files``. ``hf``: ``dataset.path`` is a ``save_to_disk`` folder (``dataset_dict.json``;
    a single saved split is the train split), a downloaded repo folder (``load_dataset(DIR, config_name)``), or a hub
    id (``load_dataset(id, config_name)``; offline, an error that says what to download).
    """
    import datasets

    from rlhf_exp.modeling import _hub_reachable, _offline_env

    name = cfg.get("name", cfg.get("kind"))
    if cfg.get("kind") == "files":
        files = _given_files(cfg)
        builder = cfg.get("path") or _files_builder(files)
        shown = ", ".join(x for fs in files.values() for x in fs)
        where = f"dataset {name} ({shown})"
        paths = [Path(x) for fs in files.values() for x in fs]
        for f in paths:   # cheap checks first: a non-UTF-8 JSON file would otherwise load as garbled text
            problem = file_problem(f, check_rows=False)
            if problem:
                raise DatasetError(f"dataset.data_files: {f} {problem}.")
        try:
            splits = dict(datasets.load_dataset(str(builder), data_files=files))
        except Exception as e:  # noqa: BLE001
            problem = _first_file_problem(paths)
            raise DatasetError(f"dataset.data_files: {problem}." if problem else
                               f"{where} could not be loaded: {type(e).__name__}: {e}") from e
    else:
        path = str(cfg.get("path"))
        p = Path(path).expanduser()
        where = f"dataset {name} (dataset.path={path})"
        paths = []
        if p.is_dir() and (p / "dataset_dict.json").exists():
            splits = dict(datasets.load_from_disk(str(p)))
        elif p.is_dir() and (p / "state.json").exists():
            splits = {str(cfg.get("train_split") or "train"): datasets.load_from_disk(str(p))}
        elif p.is_dir():
            paths = _data_files_under(p)
            splits = dict(_load_dataset(str(p), cfg, where, paths))
        elif p.exists():
            raise DatasetError(f"dataset.path={path} is a file; give its folder, or use dataset=files with "
                               f"dataset.data_files={path}.")
        elif _looks_like_path(path):
            raise DatasetError(f"dataset.path={path} does not exist.")
        elif _offline_env() or not _hub_reachable():
            raise DatasetError(f"dataset.path={path!r} is a hub dataset (no folder of that name exists here) and the "
                               f"hub cannot be reached from here. " + _download_hint(path, cfg.get("config_name")))
        else:
            splits = dict(_load_dataset(path, cfg, where, []))
    for split, ds in splits.items():
        if len(ds) == 0:
            problem = _first_file_problem(paths)
            raise DatasetError(f"{where}: split {split!r} has no rows" + (f" ({problem})." if problem else "."))
    return splits, where


def _split(splits: Mapping[str, Any], split: str, where: str, option: str):
    if split not in splits:
        raise DatasetError(f"{where} has no split {split!r} (its splits: {', '.join(splits) or 'none'}). Set "
                           f"{option}=<one of them>" + (" or dataset.eval_split=null to hold out rows of the train "
                                                        "split." if option == "dataset.eval_split" else "."))
    return splits[split]


def _shuffled(ds, seed: int):
    """``ds.shuffle(seed=seed)`` and the original row number of each row (for messages)."""
    import numpy as np

    perm = np.random.default_rng(seed).permutation(len(ds))
    return ds.select(perm), [int(i) for i in perm]


def _train_eval(cfg: Mapping[str, Any], n_eval: int, seed: int, check: Callable[[Sequence[str], str], Any]):
    """The shuffled train and eval rows with their original row numbers, and where each comes from. ``check``
    (columns, where) is called on each split first.

    ``dataset.eval_split: null``: the first ``n_eval`` rows of the shuffled train split are held out."""
    splits, where = load_splits(cfg)
    train_split, eval_split = cfg.get("train_split") or "train", cfg.get("eval_split")
    train = _split(splits, train_split, where, "dataset.train_split")
    w_train = f"{where}, split {train_split!r}"
    check(train.column_names, w_train)
    train, train_rows = _shuffled(train, seed)
    if eval_split is None:
        if len(train) <= n_eval:
            raise DatasetError(f"{w_train} has {len(train)} rows, too few to hold out {n_eval} for evaluation; lower "
                               f"the eval size (dataset.eval_size online, dataset.offline_eval_size offline) or give "
                               f"an eval split (dataset.eval_split).")
        ev, ev_rows = train.select(range(n_eval)), train_rows[:n_eval]
        train, train_rows = train.select(range(n_eval, len(train))), train_rows[n_eval:]
        w_eval = f"{w_train} (held-out rows)"
    else:
        ev = _split(splits, eval_split, where, "dataset.eval_split")
        w_eval = f"{where}, split {eval_split!r}"
        check(ev.column_names, w_eval)
        ev, ev_rows = _shuffled(ev, seed + 1)
    return (train, train_rows, w_train), (ev, ev_rows, w_eval)


def _hf(cfg: Mapping[str, Any], tokenizer) -> PromptData:
    column = cfg.get("prompt_column", "prompt")
    seed = int(cfg.get("seed", 0))
    n_train, n_eval = cfg.get("train_size"), int(cfg.get("eval_size", 128))

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
RECORD_FIELDS = ("prompt", "completion", "text", "messages", "chosen", "rejected", "label", "margin")


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
    seed = int(cfg.get("seed", 0))
    n_train, n_eval = cfg.get("offline_train_size"), int(cfg.get("offline_eval_size", 512))
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
        raise DatasetError(f"dataset {cfg.get('name', kind)!r} gave {len(data.train)} train and {len(data.eval)} "
                           f"held-out {fmt} records; both must be non-empty.")
    if tokenizer is not None:
        where = f"dataset {cfg.get('name', kind)}"
        data = OfflineData(render_conversations(data.train, tokenizer, where),
                           render_conversations(data.eval, tokenizer, where))
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
    return _from_texts(tokenizer, rows, "text", int(cfg.get("eval_size", 128)), int(cfg.get("seed", 0)) + 1, cfg)
