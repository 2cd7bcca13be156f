"""Where a dataset is: a hub id, a ``huggingface-cli download --local-dir`` folder, a ``save_to_disk`` folder, or
local files; reading them with checks that name the file and line, and the train/eval split."""
from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from rlhf_exp.data.types import DatasetError


def _null_notice(rows: Sequence[int], columns: Sequence[str], where: str) -> None:
    if rows:
        shown = ", ".join(str(r) for r in sorted(rows)[:8]) + (" ..." if len(rows) > 8 else "")
        print(f"[rlhf_exp] {where}: dropped {len(rows)} row(s) with an empty (null) cell in column(s) "
              f"{', '.join(dict.fromkeys(columns))} ({'rows' if len(rows) > 1 else 'row'} {shown}).", flush=True)


def _check_column(rows_columns: Sequence[str], column: str, where: str,
                  option: str = "dataset.prompt_column") -> None:
    if column not in rows_columns:
        raise DatasetError(f"{where} has no column {column!r}. Columns found: {', '.join(rows_columns)}. "
                           f"Set {option}=<one of them>.")


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

    name = cfg["name"]
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
            splits = {str(cfg["train_split"]): datasets.load_from_disk(str(p))}
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
    train_split, eval_split = cfg["train_split"], cfg["eval_split"]
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
