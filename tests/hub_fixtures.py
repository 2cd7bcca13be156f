"""Small local copies of the hub datasets the presets use, in the layouts users get them in.

Each ``write_*`` function writes a folder laid out like ``huggingface-cli download <repo> --repo-type dataset
--local-dir DIR``: the repo's README.md (with its YAML front matter: ``configs:`` where the real repo has them), its
data files under their real paths and formats (parquet shards written by ``datasets``, so that they carry the
``huggingface`` schema metadata; gzipped JSON lines), the repo's ``.gitattributes`` and the ``.cache/huggingface``
folder the download command leaves behind. Splits, column names and column types are those of the real dataset;
the rows are a few short, generated ones (so that the embedded tiny policy can train on them in tests).

Layouts (checked against the hub repos):

* ``stanfordnlp/imdb``: config ``plain_text`` (default),
  ``plain_text/{train,test,unsupervised}-00000-of-00001.parquet``; ``text`` (string), ``label`` (ClassLabel
  neg/pos; -1 in ``unsupervised``).
* ``trl-lib/tldr``: config ``default``, ``data/{train,validation,test}-00000-of-00001.parquet``; ``prompt``
  (Reddit post ending in ``TL;DR:``), ``completion`` (the summary) — both strings.
* ``Anthropic/hh-rlhf``: no ``configs:`` in the README (splits from the file names):
  ``{harmless-base,helpful-base,helpful-online,helpful-rejection-sampled}/{train,test}.jsonl.gz`` with ``chosen``
  and ``rejected`` (full ``\\n\\nHuman: ...\\n\\nAssistant: ...`` dialogues), and
  ``red-team-attempts/red_team_attempts.jsonl.gz`` (other columns, in no split). ``with_configs=True`` writes the
  README of the repo's open "configs" pull request instead (``all`` as default, one config per subset).
* ``insub/imdb_prefix20_forDPO_gpt2-large-imdb-FT_siebert_sentiment-roberta-large-english``: no ``configs:``,
  ``data/train-00000-of-00001-719213d68e9bb42e.parquet`` and ``data/test-00000-of-00001-9fd2d826f8e29239.parquet``;
  ``text`` (the prompt), ``chosen``, ``rejected`` (strings).
* ``trl-lib/ultrafeedback_binarized``: config ``default``, ``data/{train,test}-00000-of-00001.parquet``;
  ``chosen`` and ``rejected`` (conversations: lists of ``{content, role}``, user turn then assistant turn, the
  prompt implicit), ``score_chosen``, ``score_rejected`` (float64).

Also :func:`save_to_disk` (the third place a user has a dataset) and :func:`chat_policy` (a copy of the embedded
policy whose tokenizer has a minimal chat template).
"""
from __future__ import annotations

import gzip
import json
import random
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

# A chat template in the style of many instruct models: each turn is "<|role|>content<eos>\n"; the generation
# prompt opens the assistant's turn.
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")

_ADJ = ["great", "dull", "superb", "awful", "charming", "tedious", "moving", "clumsy"]
_NOUNS = ["film", "plot", "cast", "script", "ending", "score"]


def _sentence(rng: random.Random) -> str:
    return f"the {rng.choice(_NOUNS)} was {rng.choice(_ADJ)}"


def _review(rng: random.Random, positive: bool) -> str:
    adj = rng.choice(_ADJ[0::2] if positive else _ADJ[1::2])
    return f"This {rng.choice(_NOUNS)} was {adj} and {_sentence(rng)}. I {'loved' if positive else 'hated'} it."


def _download_leftovers(root: Path, files: Iterable[str], lfs_patterns: Sequence[str] = ("*.parquet", "*.gz")) -> None:
    """What ``huggingface-cli download --local-dir`` writes besides the repo's files."""
    (root / ".gitattributes").write_text("".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in lfs_patterns))
    cache = root / ".cache" / "huggingface"
    (cache / "download").mkdir(parents=True, exist_ok=True)
    (cache / ".gitignore").write_text("*")
    for f in list(files) + ["README.md", ".gitattributes"]:
        meta = cache / "download" / f"{f}.metadata"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text("0123456789abcdef0123456789abcdef01234567\n0\n1700000000.0\n")


def _front_matter(meta: Mapping[str, Any], body: str) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(dict(meta), sort_keys=False) + "---\n\n" + body


def _parquet(path: Path, rows: Mapping[str, list], features) -> None:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        datasets.Dataset.from_dict(dict(rows), features=features).to_parquet(str(path))
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _jsonl_gz(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


# ------------------------------------------------------------------------------------------------ stanfordnlp/imdb
def write_imdb(root: Path, n: int = 24, seed: int = 0) -> Path:
    import datasets

    root = Path(root)
    rng = random.Random(seed)
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    files = []
    for split in ("train", "test", "unsupervised"):
        labels = [i % 2 for i in range(n)] if split != "unsupervised" else [-1] * n
        texts = [_review(rng, bool(lab == 1) if lab >= 0 else rng.random() < 0.5) for lab in labels]
        f = f"plain_text/{split}-00000-of-00001.parquet"
        _parquet(root / f, {"text": texts, "label": labels}, features)
        files.append(f)
    splits = ("train", "test", "unsupervised")
    meta = {
        "annotations_creators": ["expert-generated"], "language": ["en"], "license": ["other"],
        "task_categories": ["text-classification"], "task_ids": ["sentiment-classification"],
        "paperswithcode_id": "imdb-movie-reviews", "pretty_name": "IMDB",
        "dataset_info": {"config_name": "plain_text",
                         "features": [{"name": "text", "dtype": "string"},
                                      {"name": "label", "dtype": {"class_label": {"names": {"0": "neg", "1": "pos"}}}}],
                         "splits": [{"name": s, "num_bytes": 0, "num_examples": n} for s in splits]},
        "configs": [{"config_name": "plain_text",
                     "data_files": [{"split": s, "path": f"plain_text/{s}-*"} for s in splits],
                     "default": True}],
        "train-eval-index": [{"config": "plain_text", "task": "text-classification"}],
    }
    (root / "README.md").write_text(_front_matter(meta, "# Dataset Card for \"imdb\"\n"))
    _download_leftovers(root, files, ("*.parquet",))
    return root


# ------------------------------------------------------------------------------------------------ trl-lib/tldr
def write_tldr(root: Path, n: int = 24, seed: int = 0) -> Path:
    import datasets

    root = Path(root)
    rng = random.Random(seed)
    features = datasets.Features({"prompt": datasets.Value("string"), "completion": datasets.Value("string")})
    files = []
    for split in ("train", "validation", "test"):
        prompts, completions = [], []
        for _ in range(n):
            noun = rng.choice(_NOUNS)
            prompts.append(f"SUBREDDIT: r/movies\n\nTITLE: the {noun}\n\nPOST: {_sentence(rng)}, {_sentence(rng)}."
                           f"\n\nTL;DR:")
            completions.append(f" the {noun} was {rng.choice(_ADJ)}")
        f = f"data/{split}-00000-of-00001.parquet"
        _parquet(root / f, {"prompt": prompts, "completion": completions}, features)
        files.append(f)
    splits = ("train", "validation", "test")
    meta = {"dataset_info": {"features": [{"name": "prompt", "dtype": "string"},
                                          {"name": "completion", "dtype": "string"}],
                             "splits": [{"name": s, "num_bytes": 0, "num_examples": n} for s in splits]},
            "configs": [{"config_name": "default",
                         "data_files": [{"split": s, "path": f"data/{s}-*"} for s in splits]}],
            "tags": ["trl"]}
    (root / "README.md").write_text(_front_matter(meta, "# TL;DR Dataset\n"))
    _download_leftovers(root, files, ("*.parquet",))
    return root


# ------------------------------------------------------------------------------------------------ Anthropic/hh-rlhf
HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")


def _hh_pair(rng: random.Random) -> dict[str, str]:
    q = f"Was the {rng.choice(_NOUNS)} any good?"
    context = f"\n\nHuman: Hi there.\n\nAssistant: Hello! How can I help?\n\nHuman: {q}\n\nAssistant:"
    return {"chosen": context + f" I thought {_sentence(rng)}.", "rejected": context + " No idea."}


def write_hh_rlhf(root: Path, n: int = 12, seed: int = 0, with_configs: bool = False) -> Path:
    root = Path(root)
    rng = random.Random(seed)
    files = []
    for subset in HH_SUBSETS:
        for split in ("train", "test"):
            f = f"{subset}/{split}.jsonl.gz"
            _jsonl_gz(root / f, [_hh_pair(rng) for _ in range(n)])
            files.append(f)
    f = "red-team-attempts/red_team_attempts.jsonl.gz"
    # One JSON array, as the real file: transcripts with their ratings (no chosen/rejected; in no split).
    (root / f).parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / f, "wt", encoding="utf-8") as fh:
        json.dump([{"transcript": "\n\nHuman: hi\n\nAssistant: hello", "min_harmlessness_score_transcript": 1.0,
                    "num_params": "52B", "model_type": "context distillation", "rating": 0.0,
                    "task_description": "say hi", "task_descripton_harmlessness_score": 1.0, "red_team_member_id": 1,
                    "is_upworker": False, "tags": None}], fh)
    files.append(f)
    meta: dict[str, Any] = {"license": "mit", "tags": ["human-feedback"]}
    if with_configs:
        meta = {"configs": [{"config_name": "all", "default": True, "data_files": [
                    {"split": "train", "path": ["harmless-base/train*", "helpful-*/train*"]},
                    {"split": "test", "path": ["harmless-base/test*", "helpful-*/test*"]}]}]
                + [{"config_name": s, "data_dir": s} for s in HH_SUBSETS + ("red-team-attempts",)], **meta}
    (root / "README.md").write_text(_front_matter(meta, "# Dataset Card for HH-RLHF\n"))
    _download_leftovers(root, files, ("*.gz",))
    return root


# ------------------------------------------------------------------------------------------------ IMDb DPO pairs
IMDB_DPO_FILES = {"train": "data/train-00000-of-00001-719213d68e9bb42e.parquet",
                  "test": "data/test-00000-of-00001-9fd2d826f8e29239.parquet"}


def write_imdb_dpo(root: Path, n: int = 24, seed: int = 0) -> Path:
    import datasets

    root = Path(root)
    rng = random.Random(seed)
    features = datasets.Features({k: datasets.Value("string") for k in ("text", "chosen", "rejected")})
    for split, f in IMDB_DPO_FILES.items():
        rows: dict[str, list] = {"text": [], "chosen": [], "rejected": []}
        for i in range(n):
            prefix = f"I watched this {rng.choice(_NOUNS)} and"
            good, bad = f" {_review(rng, True)}", f" {_review(rng, False)}"
            repeat = i % 2 == 0     # some completions repeat the prompt (the preset cuts it)
            rows["text"].append(prefix)
            rows["chosen"].append(prefix + good if repeat else good)
            rows["rejected"].append(prefix + bad if repeat else bad)
        _parquet(root / f, rows, features)
    meta = {"arxiv": "2305.18290"}
    (root / "README.md").write_text(_front_matter(meta, "IMDb prefixes with two gpt2-large continuations.\n"))
    _download_leftovers(root, IMDB_DPO_FILES.values(), ("*.parquet",))
    return root


# ------------------------------------------------------------------------------------------------ ultrafeedback
def _conversation_features():
    import datasets

    return [{"content": datasets.Value("string"), "role": datasets.Value("string")}]


def write_ultrafeedback(root: Path, n: int = 24, seed: int = 0) -> Path:
    import datasets

    root = Path(root)
    rng = random.Random(seed)
    conv = _conversation_features()
    features = datasets.Features({"chosen": conv, "rejected": conv, "score_chosen": datasets.Value("float64"),
                                  "score_rejected": datasets.Value("float64")})
    files = []
    for split in ("train", "test"):
        rows: dict[str, list] = {"chosen": [], "rejected": [], "score_chosen": [], "score_rejected": []}
        for _ in range(n):
            user = {"content": f"Write a short review of the {rng.choice(_NOUNS)}.", "role": "user"}
            rows["chosen"].append([user, {"content": _review(rng, True), "role": "assistant"}])
            rows["rejected"].append([user, {"content": _review(rng, False), "role": "assistant"}])
            rows["score_chosen"].append(float(rng.choice([7, 8, 9])))
            rows["score_rejected"].append(float(rng.choice([2, 3, 4])))
        f = f"data/{split}-00000-of-00001.parquet"
        _parquet(root / f, rows, features)
        files.append(f)
    meta = {"dataset_info": {"features": [
                {"name": c, "list": [{"name": "content", "dtype": "string"}, {"name": "role", "dtype": "string"}]}
                for c in ("chosen", "rejected")] + [{"name": c, "dtype": "float64"}
                                                     for c in ("score_chosen", "score_rejected")],
                "splits": [{"name": s, "num_bytes": 0, "num_examples": n} for s in ("train", "test")]},
            "configs": [{"config_name": "default",
                         "data_files": [{"split": s, "path": f"data/{s}-*"} for s in ("train", "test")]}]}
    (root / "README.md").write_text(_front_matter(meta, ""))
    _download_leftovers(root, files, ("*.parquet",))
    return root


# ------------------------------------------------------------------------------------------------ the other places
def save_to_disk(local_dir: Path, dst: Path, config_name: str | None = None) -> Path:
    """The ``save_to_disk`` copy of a ``--local-dir`` folder (what ``load_dataset(id).save_to_disk(dst)`` writes)."""
    import datasets

    datasets.load_dataset(str(local_dir), config_name).save_to_disk(str(dst))
    return Path(dst)


def chat_policy(dst: Path) -> Path:
    """A copy of the embedded tiny policy whose tokenizer has :data:`CHAT_TEMPLATE` (the shipped one has none)."""
    from rlhf_exp.task import POLICY_DIR

    dst = Path(dst)
    shutil.copytree(POLICY_DIR, dst)
    cfg_path = dst / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return dst
