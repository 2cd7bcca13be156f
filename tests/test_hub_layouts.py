"""Every dataset preset on local copies laid out as the hub ships them (tests/hub_fixtures.py), and conversational data.

The runs use the embedded tiny policy (a copy with a chat template where the data is conversational), 2 steps each,
in one torch thread (much faster than two on a busy machine).
"""
import json

import pytest

from rlhf_exp.data import DatasetError, load_offline_data, load_prompt_data
from tests import hub_fixtures as H
from tests.conftest import compose

SMALL = ["logger=none", "train.steps=2", "train.batch_size=2", "train.mini_batch_size=2", "train.forward_batch_size=8",
         "++dataset.train_size=8", "++dataset.eval_size=2", "++dataset.offline_train_size=8",
         "++dataset.offline_eval_size=2", "eval.every=0", "eval.batch_size=8", "eval.num_samples_to_log=2",
         "generation.max_new_tokens=4", "generation.min_new_tokens=2", "train.save_model=false",
         "++dataset.max_prompt_tokens=24"]
OFFLINE_SMALL = ["objective.max_length=64"]   # an online objective has no max_length (an unknown key is refused)
USER = "Write a short review of the film."


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _conv(user, reply=None):
    return [{"role": "user", "content": user}] + ([{"role": "assistant", "content": reply}] if reply else [])


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The hub-layout copies, their save_to_disk copies, conversational files and a policy with a chat template."""
    root = tmp_path_factory.mktemp("hub")
    d = {"imdb": H.write_imdb(root / "imdb"), "tldr": H.write_tldr(root / "tldr"),
         "hh_rlhf": H.write_hh_rlhf(root / "hh_rlhf"), "imdb_dpo": H.write_imdb_dpo(root / "imdb_dpo"),
         "ultrafeedback": H.write_ultrafeedback(root / "ultrafeedback"), "chat_policy": H.chat_policy(root / "chat")}
    n = 12
    d["conv_unpaired"] = _jsonl(root / "kto.jsonl", [
        {"prompt": _conv(f"Review number {i}, please."), "completion": [{"role": "assistant", "content":
         "I loved it." if i % 2 else "I hated it."}], "label": bool(i % 2)} for i in range(n)])
    d["conv_messages"] = _jsonl(root / "chats.jsonl", [
        {"messages": _conv("Hi.", "Hello!") + _conv(f"Was film {i} good?", "It was great.")} for i in range(n)])
    d["conv_prompts"] = _jsonl(root / "prompts.jsonl", [{"prompt": _conv(f"Review film {i}.")} for i in range(n)])
    return d


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------- every preset runs
UF_TRAIN = "ultrafeedback/data/train-00000-of-00001.parquet"
RUNS = [  # (dataset preset and where its copy is, objective): each objective that the preset's columns serve
    ("imdb", "reinforce"), ("imdb", "sft"), ("tldr", "reinforce"), ("tldr", "sft"), ("hh_rlhf", "reward"),
    ("hh_rlhf", "dpo"), ("imdb_dpo", "reinforce"), ("imdb_dpo", "reward"), ("imdb_dpo", "dpo"),
    ("ultrafeedback", "reward"), ("ultrafeedback", "dpo"), ("conv_unpaired", "kto"), ("conv_messages", "sft"),
    ("conv_prompts", "reinforce"),
]


def _where(hub, name):
    if name in ("imdb", "tldr", "hh_rlhf", "imdb_dpo"):
        return [f"dataset={name}", f"dataset.path={hub[name]}"]
    f = hub[name] if name != "ultrafeedback" else hub[name] / UF_TRAIN.split("/", 1)[1]
    return ["dataset=files", f"dataset.data_files={f}", f"model.path={hub['chat_policy']}",
            "++dataset.max_prompt_tokens=64"]    # whole rendered conversations


@pytest.mark.parametrize("name,objective", RUNS, ids=[f"{n}-{o}" for n, o in RUNS])
def test_every_preset_runs_each_objective_it_serves_from_the_local_dir_layout(hub, tmp_path, name, objective):
    from rlhf_exp.__main__ import run

    offline = OFFLINE_SMALL if objective in ("sft", "reward", "dpo", "kto") else []
    summary = run(compose(SMALL + [f"objective={objective}"] + offline + _where(hub, name)), tmp_path)
    assert summary["status"] == "finished" and summary["steps"] == 2
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2]
    losses = [k for k in rows[1] if k.startswith("train/loss/")]
    assert losses and all(rows[2][k] == rows[2][k] for k in losses)       # finite, not NaN
    text = (tmp_path / "samples.jsonl").read_text()   # what rewards and logs saw (empty for objective=reward)
    assert "{'role'" not in text and "'content':" not in text      # never the Python repr of a conversation
    if objective != "reward":
        assert text
        if name.startswith("conv") or name == "ultrafeedback":
            assert "<|user|>" in text and "<|assistant|>" in text


# ----------------------------------------------------------------------------------------------- the three places
PRESET_FORMATS = [("imdb", "sft"), ("tldr", "sft"), ("hh_rlhf", "preference"), ("imdb_dpo", "preference")]


@pytest.mark.parametrize("preset,fmt", PRESET_FORMATS)
def test_local_dir_and_save_to_disk_copies_give_the_same_data(hub, tmp_path, preset, fmt):
    from rlhf_exp.modeling import load_tokenizer
    from rlhf_exp.task import POLICY_DIR

    config_name = compose([f"dataset={preset}"]).dataset.get("config_name")
    saved = H.save_to_disk(hub[preset], tmp_path / "saved", config_name)
    assert (saved / "dataset_dict.json").exists()
    over = ["++dataset.offline_eval_size=4", "++dataset.offline_train_size=8"]
    a = load_offline_data(compose([f"dataset={preset}", f"dataset.path={hub[preset]}"] + over).dataset, fmt)
    b = load_offline_data(compose([f"dataset={preset}", f"dataset.path={saved}"] + over).dataset, fmt)
    assert a == b and len(a.train) == 8 and len(a.eval) == 4
    if preset != "hh_rlhf":   # its prompts are implicit: no online runs
        tok = load_tokenizer(str(POLICY_DIR))
        over = ["++dataset.eval_size=3", "++dataset.train_size=5"]
        pa = load_prompt_data(compose([f"dataset={preset}", f"dataset.path={hub[preset]}"] + over).dataset, tok)
        pb = load_prompt_data(compose([f"dataset={preset}", f"dataset.path={saved}"] + over).dataset, tok)
        assert [p.ids for p in pa.train + pa.eval] == [p.ids for p in pb.train + pb.eval]


def test_a_hub_id_is_loaded_with_the_presets_config_name(hub, monkeypatch):
    """Online, the hub id goes to load_dataset with dataset.config_name (not the display name dataset.name)."""
    import datasets

    import rlhf_exp.modeling as modeling

    calls = []
    real = datasets.load_dataset

    def fake_load_dataset(path, name=None, **kw):
        calls.append((path, name, kw.get("data_dir")))
        return real(str(hub["imdb"]), name, **kw)    # the local copy stands in for the hub

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(modeling, "_offline_env", lambda: False)
    monkeypatch.setattr(modeling, "_hub_reachable", lambda: True)
    cfg = compose(["dataset=imdb", "++dataset.offline_eval_size=2"]).dataset
    data = load_offline_data(cfg, "sft")
    assert calls == [("stanfordnlp/imdb", "plain_text", None)] and len(data.eval) == 2


def test_hh_rlhf_subsets_by_config_name_or_data_dir(hub, tmp_path):
    """The repo's main README has no configs (splits come from the file names; the red-team file, with other
    columns, is in no split); its configs pull request adds one per subset. Both select helpful-base."""
    with_configs = H.write_hh_rlhf(tmp_path / "hh", with_configs=True)
    cases = [(hub["hh_rlhf"], [], 48), (hub["hh_rlhf"], ["dataset.data_dir=helpful-base"], 12),
             (with_configs, [], 48), (with_configs, ["dataset.config_name=helpful-base"], 12)]
    for path, extra, n_train in cases:
        cfg = compose(["dataset=hh_rlhf", f"dataset.path={path}", "dataset.offline_eval_size=2"] + extra).dataset
        data = load_offline_data(cfg, "preference")
        assert len(data.train) == n_train, extra
        assert data.train[0]["prompt"].endswith("\n\nAssistant:") and not data.train[0]["chosen"].startswith("\n")
    with pytest.raises(DatasetError, match=r"dataset.config_name=helpful.*helpful-base.*Set dataset.config_name="):
        load_offline_data(compose(["dataset=hh_rlhf", f"dataset.path={with_configs}",
                                   "dataset.config_name=helpful"]).dataset, "preference")


# ----------------------------------------------------------------------------------------------- conversations
def test_conversations_are_rendered_and_only_assistant_tokens_take_a_loss(hub):
    from rlhf_exp.core.losses import IGNORE_INDEX
    from rlhf_exp.modeling import load_tokenizer
    from rlhf_exp.objectives import build_offline_objective
    from rlhf_exp.objectives.sft import sft_collate

    tok = load_tokenizer(str(hub["chat_policy"]))
    eos = tok.eos_token
    cfg = compose(["objective=sft", "dataset=files", f"dataset.data_files={hub['conv_messages']}",
                   "dataset.offline_eval_size=2"])
    data = load_offline_data(cfg.dataset, "sft", tok)
    rec = data.train[0]
    assert rec["prompt"] == f"<|user|>Hi.{eos}\n<|assistant|>"
    assert [t for t, a in rec["completion_parts"] if a] == [f"Hello!{eos}\n", f"It was great.{eos}"]
    item = build_offline_objective(cfg.objective).encode([rec], tok)[0]
    ids, _, labels = sft_collate([item["prompt_ids"]], [item["completion_ids"]], tok.pad_token_id, "cpu",
                                 [item["completion_mask"]])
    trained = tok.decode([int(t) for t in labels[0] if t != IGNORE_INDEX])
    assert trained == f"Hello!{eos}\nIt was great.{eos}"            # not the user's second turn, not the prompt
    assert tok.decode(ids[0]) == rec["prompt"] + rec["completion"]

    # Preference pairs with an implicit prompt (ultrafeedback): rendered prompt, assistant replies ending in EOS once;
    # the reward model sees the rendered conversation.
    uf = hub["ultrafeedback"] / UF_TRAIN.split("/", 1)[1]
    cfg = compose(["objective=dpo", "dataset=files", f"dataset.data_files={uf}", "dataset.offline_eval_size=2"])
    pair = load_offline_data(cfg.dataset, "preference", tok).train[0]
    assert pair["prompt"].startswith("<|user|>Write a short review") and pair["prompt"].endswith("<|assistant|>")
    assert pair["chosen"].endswith(eos) and "<|" not in pair["chosen"][:-len(eos)]
    dpo_item = build_offline_objective(cfg.objective).encode([pair], tok)[0]
    assert dpo_item["chosen_ids"].count(tok.eos_token_id) == 1 and dpo_item["chosen_ids"][-1] == tok.eos_token_id
    rm = build_offline_objective(compose(["objective=reward"]).objective).encode([pair], tok)[0]
    assert tok.decode(rm["chosen_ids"]) == pair["prompt"] + pair["chosen"]


def test_explicit_conversational_prompts_and_online_prompts(hub, tmp_path):
    """The bad-input probe's file: prompt/chosen/rejected all conversations (explicit prompt)."""
    from rlhf_exp.modeling import load_tokenizer

    tok = load_tokenizer(str(hub["chat_policy"]))
    rows = [{"prompt": _conv(USER), "chosen": [{"role": "assistant", "content": f"Great film {i}."}],
             "rejected": [{"role": "assistant", "content": "Bad."}]} for i in range(6)]
    f = _jsonl(tmp_path / "prefs.jsonl", rows)
    cfg = compose(["objective=dpo", "dataset=files", f"dataset.data_files={f}", "dataset.offline_eval_size=2"]).dataset
    data = load_offline_data(cfg, "preference", tok)
    assert {r["prompt"] for r in data.train} == {f"<|user|>{USER}{tok.eos_token}\n<|assistant|>"}
    assert all(r["rejected"] == f"Bad.{tok.eos_token}" for r in data.train + data.eval)
    # a multi-turn prompt (with an assistant turn in its history) renders whole; only the reply is the completion
    from rlhf_exp.data import render_completion

    history = _conv("Hi.", "Hello!") + _conv(USER)
    prompt, reply = render_completion(tok, history, [{"role": "assistant", "content": "Fine."}], "chosen", "row 0")
    assert prompt == tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert reply == f"Fine.{tok.eos_token}"
    # online: the conversation in the template, then the assistant's opening; rewards see that text
    cfg = compose(["dataset=files", f"dataset.data_files={hub['conv_prompts']}", "dataset.eval_size=3"]).dataset
    prompts = load_prompt_data(cfg, tok)
    p = prompts.eval[0]
    assert p.text.startswith("<|user|>Review film ") and p.text.endswith("<|assistant|>")
    assert tok.decode(p.ids) == p.text and len(prompts.train) == 9


def test_conversation_errors_name_the_row_and_column(hub, tmp_path):
    from rlhf_exp.modeling import load_tokenizer
    from rlhf_exp.task import POLICY_DIR

    tok = load_tokenizer(str(hub["chat_policy"]))
    f = _jsonl(tmp_path / "noasst.jsonl", [{"messages": _conv(f"hi {i}")} for i in range(5)])
    cfg = compose(["objective=sft", "dataset=files", f"dataset.data_files={f}", "dataset.offline_eval_size=1"]).dataset
    with pytest.raises(DatasetError, match=r"row \d, column 'messages': the conversation has no assistant turn "
                                           r"\(roles: user\)"):
        load_offline_data(cfg, "sft", tok)
    # a list-valued column that is not a conversation is never stringified
    f = _jsonl(tmp_path / "tags.jsonl", [{"prompt": ["a", "b"], "completion": "c"} for _ in range(5)])
    cfg = compose(["objective=sft", "dataset=files", f"dataset.data_files={f}", "dataset.offline_eval_size=1",
                   "dataset.eval_size=1"]).dataset
    with pytest.raises(DatasetError, match=r"column 'prompt': the cell is a list \(\['a', 'b'\]\), neither text nor"):
        load_offline_data(cfg, "sft", tok)
    with pytest.raises(DatasetError, match=r"column 'prompt': the cell is a list"):
        load_prompt_data(cfg, tok)
    # conversations need a chat template: the shipped tokenizer has none
    cfg = compose(["dataset=files", f"dataset.data_files={hub['conv_prompts']}", "dataset.eval_size=2"]).dataset
    with pytest.raises(DatasetError, match="the prompts are conversations.*has no chat template.*model.tokenizer="):
        load_prompt_data(cfg, load_tokenizer(str(POLICY_DIR)))


# ----------------------------------------------------------------------------------------------- bad input
def test_online_runs_hold_out_rows_of_a_single_file(tmp_path):
    from rlhf_exp.modeling import load_tokenizer
    from rlhf_exp.task import POLICY_DIR

    f = _jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"The film number {i} was"} for i in range(10)])
    cfg = compose(["dataset=files", f"dataset.data_files={f}", "dataset.eval_size=3"]).dataset
    data = load_prompt_data(cfg, load_tokenizer(str(POLICY_DIR)))
    assert len(data.eval) == 3 and len(data.train) == 7
    assert not {p.text for p in data.train} & {p.text for p in data.eval}
    with pytest.raises(DatasetError, match=r"has 10 rows, too few to hold out 128.*dataset.eval_size"):
        load_prompt_data(compose(["dataset=files", f"dataset.data_files={f}"]).dataset,
                         load_tokenizer(str(POLICY_DIR)))


def test_null_cells_drop_their_rows_with_a_count(tmp_path, capsys):
    from rlhf_exp.modeling import load_tokenizer
    from rlhf_exp.task import POLICY_DIR

    rows = [{"prompt": None if i in (2, 5) else f"Q{i}", "chosen": " yes", "rejected": None if i == 7 else " no"}
            for i in range(12)]
    f = _jsonl(tmp_path / "p.jsonl", rows)
    cfg = compose(["objective=dpo", "dataset=files", f"dataset.data_files={f}", "dataset.offline_eval_size=2"]).dataset
    data = load_offline_data(cfg, "preference")
    records = data.train + data.eval
    assert len(records) == 9 and all(r["prompt"] != "None" and r["rejected"] != "None" for r in records)
    out = capsys.readouterr().out
    assert "dropped" in out and "null" in out and "prompt" in out
    assert sum(int(line.split("dropped ")[1].split()[0]) for line in out.splitlines() if "dropped" in line) == 3
    data = load_prompt_data(compose(["dataset=files", f"dataset.data_files={f}", "dataset.eval_size=2"]).dataset,
                            load_tokenizer(str(POLICY_DIR)))
    assert len(data.train) + len(data.eval) == 10 and all(p.text != "None" for p in data.train + data.eval)


BAD_FILES = [  # name, content, what the error must say
    ("empty.jsonl", b"", r"empty\.jsonl is empty \(0 bytes\)"),
    ("blank.jsonl", b"\n\n", r"blank\.jsonl has no rows"),
    ("bad.jsonl", b'{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",}\n',
     r"bad\.jsonl line 3 \(row 2\) is not valid JSON"),
    ("latin1.jsonl", '{"prompt": "a"}\n{"prompt": "café"}\n'.encode("latin-1"),
     r"latin1\.jsonl is not UTF-8 text: line 2 has the byte 0xe9.*iconv"),
    ("latin1.csv", "prompt\ncafé\n".encode("latin-1"), r"latin1\.csv is not UTF-8 text: line 2"),
    ("fields.csv", b"prompt,completion\na,b\nc,d,e\n", r"fields\.csv line 3 has 3 fields but the header has 2"),
    ("array.json", b'[{"prompt": "a"},\n {"prompt": "b"]\n', r"array\.json is not valid JSON: line 2"),
    ("zero.parquet", b"", r"zero\.parquet is empty \(0 bytes\)"),
    ("junk.parquet", b"not a parquet file", r"junk\.parquet is not a readable parquet file"),
]


@pytest.mark.parametrize("name,content,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_unreadable_data_files_name_the_file_and_line(tmp_path, name, content, message):
    f = tmp_path / name
    f.write_bytes(content)
    cfg = compose(["objective=sft", "dataset=files", f"dataset.data_files={f}", "dataset.offline_eval_size=1"]).dataset
    with pytest.raises(DatasetError, match=message):
        load_offline_data(cfg, "sft")


def test_a_preset_on_the_wrong_folder_says_what_it_found(hub, tmp_path):
    from rlhf_exp.modeling import load_tokenizer
    from rlhf_exp.task import POLICY_DIR

    tok = load_tokenizer(str(POLICY_DIR))
    # the imdb copy under dataset=tldr: its default config loads, but the column tldr reads is not there
    with pytest.raises(DatasetError, match=r"has no column 'prompt'\. Columns found: text, label\. Set "
                                           r"dataset.prompt_column="):
        load_prompt_data(compose(["dataset=tldr", f"dataset.path={hub['imdb']}"]).dataset, tok)
    with pytest.raises(DatasetError, match=r"has no column 'chosen'\. Columns found: text, label\. Set "
                                           r"dataset.columns.chosen="):
        load_offline_data(compose(["objective=dpo", "dataset=imdb_dpo", f"dataset.path={hub['imdb']}",
                                   "dataset.eval_split=unsupervised"]).dataset, "preference")
    # (sft reads imdb's text column as plain texts, but tldr's eval split is not there)
    with pytest.raises(DatasetError, match=r"has no split 'validation' \(its splits: train, test, unsupervised\)\. "
                                           r"Set dataset.eval_split=<one of them> or dataset.eval_split=null"):
        load_offline_data(compose(["objective=sft", "dataset=tldr", f"dataset.path={hub['imdb']}"]).dataset, "sft")
    # ... and imdb's config name is not one of tldr's configs
    with pytest.raises(DatasetError, match=r"dataset.config_name=plain_text is not one of its configs"):
        load_prompt_data(compose(["dataset=imdb", f"dataset.path={hub['tldr']}"]).dataset, tok)
    # a folder with none of the preset's splits
    H.write_tldr(tmp_path / "dev_only", n=4)
    for f in (tmp_path / "dev_only" / "data").iterdir():
        f.rename(f.with_name(f.name.replace("train", "dev").replace("validation", "dev2").replace("test", "dev3")))
    (tmp_path / "dev_only" / "README.md").write_text("# no configs\n")
    with pytest.raises(DatasetError, match=r"has no split 'train' \(its splits: .*\)\. Set dataset.train_split="):
        load_prompt_data(compose(["dataset=tldr", f"dataset.path={tmp_path / 'dev_only'}"]).dataset, tok)
    # a folder without data files (only the README and the download cache)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("---\nlicense: mit\n---\n")
    with pytest.raises(DatasetError, match=r"holds no data files.*huggingface-cli download"):
        load_offline_data(compose(["objective=sft", "dataset=tldr", f"dataset.path={tmp_path / 'empty'}"]).dataset,
                          "sft")
    with pytest.raises(DatasetError, match=r"dataset.path=.*nope does not exist"):
        load_offline_data(compose(["objective=sft", "dataset=tldr", f"dataset.path={tmp_path / 'nope'}"]).dataset,
                          "sft")


def test_sft_collate_ignores_completion_tokens_masked_out():
    """Hand-checked labels: prompt and padding ignored, and the completion tokens whose mask is 0."""
    from rlhf_exp.core.losses import IGNORE_INDEX as X
    from rlhf_exp.objectives.sft import sft_collate

    ids, mask, labels = sft_collate([[1, 2], [3]], [[4, 5, 6, 0], [7, 0]], pad_id=0,
                                    completion_masks=[[1, 0, 1, 1], None])
    assert ids.tolist() == [[1, 2, 4, 5, 6, 0], [3, 7, 0, 0, 0, 0]]
    assert labels.tolist() == [[X, X, 4, X, 6, 0], [X, 7, 0, X, X, X]]
