"""Data for the offline objectives: the embedded task's records, local files with a column mapping, clear errors."""
import json
import time

import pytest

from rlhf_exp.data import DatasetError, common_prefix_prompt, load_offline_data, offline_eval_prompts
from rlhf_exp.task import reviews
from tests.conftest import compose


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PAIRS = [{"question": f"Q{i}:", "good": f" good answer {i}", "bad": f" bad answer {i}", "gap": i % 3}
         for i in range(20)]


def test_embedded_task_gives_every_format_from_its_disjoint_splits():
    cfg = compose(["objective=dpo", "dataset.offline_train_size=16", "dataset.offline_eval_size=8"]).dataset
    prefs = load_offline_data(cfg, "preference")
    assert prefs.train == reviews.split_data("preference_train", 16, 0)
    assert prefs.eval == reviews.split_data("preference_eval", 8, 0)
    un = load_offline_data(cfg, "unpaired")
    assert set(un.train[0]) == {"prompt", "completion", "label"} and len(un.eval) == 8
    sft = load_offline_data(cfg, "sft")
    assert sft.train[0]["prompt"] == "" and sft.train[0]["completion"] == reviews.split_data("sft_train", 1, 0)[0]
    train_texts = {r["prompt"] + r["chosen"] for r in prefs.train}
    assert not train_texts & {r["prompt"] + r["chosen"] for r in prefs.eval}


def test_jsonl_preferences_with_a_column_mapping_and_held_out_rows(tmp_path):
    f = _write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    cfg = compose(["objective=reward", "dataset=files", f"dataset.data_files={f}", "dataset.columns.prompt=question",
                   "dataset.columns.chosen=good", "dataset.columns.rejected=bad", "dataset.columns.margin=gap",
                   "dataset.offline_eval_size=5"]).dataset
    data = load_offline_data(cfg, "preference")
    assert len(data.train) == 15 and len(data.eval) == 5
    everything = sorted(data.train + data.eval, key=lambda r: int(r["prompt"][1:-1]))
    assert everything[3] == {"prompt": "Q3:", "chosen": " good answer 3", "rejected": " bad answer 3", "margin": 0.0}
    assert {r["prompt"] for r in data.train}.isdisjoint({r["prompt"] for r in data.eval})


def test_csv_unpaired_with_train_and_test_files(tmp_path):
    rows = "p,c,ok\n" + "".join(f"prompt {i},completion {i},{'true' if i % 2 else 'false'}\n" for i in range(6))
    (tmp_path / "train.csv").write_text(rows)
    (tmp_path / "test.csv").write_text(rows)
    cfg = compose(["objective=kto", "dataset=files", f"+dataset.data_files.train={tmp_path / 'train.csv'}",
                   f"+dataset.data_files.test={tmp_path / 'test.csv'}", "dataset.eval_split=test",
                   "dataset.columns.prompt=p", "dataset.columns.completion=c", "dataset.columns.label=ok"]).dataset
    data = load_offline_data(cfg, "unpaired")
    assert len(data.train) == 6 and len(data.eval) == 6
    assert {(r["prompt"], r["label"]) for r in data.train} == {(f"prompt {i}", bool(i % 2)) for i in range(6)}


def test_plain_text_sft_from_a_text_column(tmp_path):
    f = _write_jsonl(tmp_path / "texts.jsonl", [{"body": f"text number {i}"} for i in range(10)])
    cfg = compose(["objective=sft", "dataset=files", f"dataset.data_files={f}", "dataset.columns.text=body",
                   "dataset.offline_eval_size=2"]).dataset
    data = load_offline_data(cfg, "sft")
    assert all(r["prompt"] == "" and r["completion"].startswith("text number") for r in data.train + data.eval)


def test_misnamed_column_names_the_columns_found_and_the_option(tmp_path):
    f = _write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    cfg = compose(["objective=dpo", "dataset=files", f"dataset.data_files={f}", "dataset.columns.prompt=question",
                   "dataset.columns.chosen=good", "dataset.columns.rejected=worse"]).dataset
    with pytest.raises(DatasetError) as e:
        load_offline_data(cfg, "preference")
    msg = str(e.value)
    assert "'worse'" in msg and "question, good, bad, gap" in msg and "dataset.columns.rejected" in msg


def test_missing_column_with_default_names(tmp_path):
    f = _write_jsonl(tmp_path / "un.jsonl", [{"prompt": "a", "completion": "b"}] * 4)
    cfg = compose(["objective=kto", "dataset=files", f"dataset.data_files={f}", "dataset.offline_eval_size=1"]).dataset
    with pytest.raises(DatasetError, match=r"no column 'label'.*Columns found: prompt, completion.*dataset.columns.label"):
        load_offline_data(cfg, "unpaired")


def test_files_errors_are_clear(tmp_path):
    cfg = compose(["objective=dpo", "dataset=files", f"dataset.data_files={tmp_path / 'nope.jsonl'}"]).dataset
    with pytest.raises(DatasetError, match="does not exist"):
        load_offline_data(cfg, "preference")
    (tmp_path / "x.txt").write_text("hello\n")
    cfg = compose(["objective=dpo", "dataset=files", f"dataset.data_files={tmp_path / 'x.txt'}"]).dataset
    with pytest.raises(DatasetError, match="dataset.path=json"):
        load_offline_data(cfg, "preference")
    with pytest.raises(DatasetError, match="unknown keys"):
        load_offline_data(compose(["objective=dpo", "dataset=files", f"dataset.data_files={tmp_path / 'x.txt'}",
                                   "+dataset.columns.answer=a"]).dataset, "preference")


@pytest.mark.parametrize("dataset,hub_id", [("hh_rlhf", "Anthropic/hh-rlhf"), ("tldr", "trl-lib/tldr"),
                                            ("imdb_dpo", "insub/imdb_prefix20_forDPO")])
def test_hub_datasets_fail_fast_offline_naming_what_to_download(dataset, hub_id):
    cfg = compose(["objective=dpo", f"dataset={dataset}"]).dataset
    t0 = time.perf_counter()
    with pytest.raises(DatasetError) as e:
        load_offline_data(cfg, "preference")
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    assert hub_id in msg and "save_to_disk" in msg and "dataset.path=" in msg
    assert f"huggingface-cli download {hub_id}" in msg and "--repo-type dataset --local-dir DIR" in msg


def test_common_prefix_prompt_for_hh_style_pairs():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: Why did the chicken"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: No."
    p, c, r = common_prefix_prompt(chosen, rejected, "\n\nAssistant:")
    assert p == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant:"
    assert (c, r) == (" Why did the chicken", " No.")
    assert common_prefix_prompt("abcX", "abcY") == ("abc", "X", "Y")


def test_prompts_repeated_in_completions_are_cut(tmp_path):
    rows = [{"text": f"Review {i} starts", "chosen": f"Review {i} starts well", "rejected": f"Review {i} starts badly"}
            for i in range(6)]
    f = _write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = compose(["objective=dpo", "dataset=files", f"dataset.data_files={f}", "dataset.columns.prompt=text",
                   "dataset.offline_eval_size=2"]).dataset
    data = load_offline_data(cfg, "preference")
    assert all(r["chosen"] == " well" and r["rejected"] == " badly" for r in data.train + data.eval)


def test_policy_eval_prompts_are_the_online_ones_on_the_embedded_task():
    from rlhf_exp.data import load_prompt_data
    from rlhf_exp.modeling import load_tokenizer

    cfg = compose(["objective=dpo", "dataset.train_size=16"])
    tok = load_tokenizer(cfg.model.path)
    online = load_prompt_data(cfg.dataset, tok).eval
    offline = offline_eval_prompts(cfg.dataset, tok, [])
    assert [p.ids for p in offline] == [p.ids for p in online] and len(offline) == cfg.dataset.eval_size
