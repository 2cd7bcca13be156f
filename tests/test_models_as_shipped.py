"""Models as they ship on the hub: GPT-2 without a pad token, several EOS ids in generation_config.json, one
truncation side for training and scoring a learned reward, and a clear error for each broken checkpoint a user can
point an option at."""
import json
import shutil

import pytest
import torch

from rlhf_exp.__main__ import run
from rlhf_exp.modeling import ModelNotAvailableError, eos_token_ids, load_causal_lm, load_tokenizer
from rlhf_exp.task import TOKENIZER_DIR
from tests.conftest import compose, objective_from_yaml
from tests.hub_models import gpt2_hub_dir, gpt2_two_eos_dir  # noqa: F401  (fixtures)

SMALL = ["logger=none", "train.steps=1", "train.batch_size=4", "train.mini_batch_size=4", "eval.every=0",
         "dataset.eval_size=4", "dataset.train_size=16", "dataset.offline_train_size=16",
         "dataset.offline_eval_size=8", "generation.max_new_tokens=6", "train.save_model=false"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")


def read_metrics(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


def copy_model_only(src, dst):
    """The checkpoint without its tokenizer files (config, generation config, weights)."""
    dst.mkdir(parents=True)
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(src / f, dst / f)
    return dst


def copy_tokenizer_only(src, dst):
    dst.mkdir(parents=True)
    for f in TOKENIZER_FILES:
        if (src / f).exists():
            shutil.copy(src / f, dst / f)
    return dst


# ------------------------------------------------------------------------------------------------ no pad token
def test_no_pad_token_pads_with_eos_and_says_so(gpt2_hub_dir, capsys):
    assert "pad_token" not in json.loads((gpt2_hub_dir / "tokenizer_config.json").read_text())
    tok = load_tokenizer(str(gpt2_hub_dir), "model.path")
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no pad token; padding with its EOS token '<|endoftext|>'" in out[0]
    assert "model.path=" in out[0]


def test_reward_model_trains_and_scores_batches_on_gpt2_without_pad(gpt2_hub_dir, tmp_path):
    """The crash "Cannot handle batch sizes > 1 if no padding token is defined" is gone: the classifier gets the
    EOS id as its pad id, in training and in the saved model that reward_model=learned scores with."""
    from rlhf_exp.rewards import build_reward_model

    summary = run(compose(SMALL + ["objective=reward", f"model.path={gpt2_hub_dir}", "train.steps=2",
                                   "train.save_model=true"]), tmp_path)
    assert summary["status"] == "finished" and summary["steps"] == 2
    saved = json.loads((tmp_path / "reward_model" / "config.json").read_text())
    eos = json.loads((gpt2_hub_dir / "config.json").read_text())["eos_token_id"]
    assert saved["pad_token_id"] == eos
    rm = build_reward_model(compose(["reward_model=learned", f"reward_model.path={tmp_path}"]).reward_model)
    out = rm(["a film", "the plot was dull but", "i"], [" was great", " the end was good and long", " loved it"])
    assert out.scores.shape == (3,) and torch.isfinite(out.scores).all()
    # a text scores the same alone as in a padded batch (the classifier reads the last real token)
    alone = rm(["i"], [" loved it"]).scores
    assert alone.item() == pytest.approx(out.scores[2].item(), abs=1e-5)


def test_reward_training_and_scoring_see_the_same_tokens(gpt2_hub_dir, tmp_path):
    """Both truncate on the left: a text longer than max_length keeps its end (the end of the response)."""
    from transformers import AutoModelForSequenceClassification

    from rlhf_exp.rewards.learned import LearnedReward

    tok = load_tokenizer(str(gpt2_hub_dir), "model.path")
    rm_dir = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(gpt2_hub_dir, num_labels=1).save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    prompt, chosen = "the film was great and the acting was superb. ", "the plot was dull but the ending was good"
    max_len = 8
    item = objective_from_yaml("reward", max_length=max_len).encode(
        [{"prompt": prompt, "chosen": chosen, "rejected": "awful"}], tok)[0]
    full = tok(prompt + chosen)["input_ids"]
    assert len(full) > max_len and item["chosen_ids"] == full[-max_len:]

    reward = LearnedReward(str(rm_dir), max_length=max_len)
    seen = []
    forward = reward.model.forward

    def spy(input_ids=None, attention_mask=None, **kw):
        seen.extend(ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask))
        return forward(input_ids=input_ids, attention_mask=attention_mask, **kw)

    reward.model.forward = spy
    reward([prompt, "a"], [chosen, " b"])
    assert seen[0] == item["chosen_ids"]


# ------------------------------------------------------------------------------------------------ several EOS ids
def test_every_eos_id_of_the_generation_config_ends_a_response(gpt2_two_eos_dir, tmp_path):
    tok = load_tokenizer(str(gpt2_two_eos_dir), "model.path")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    lm = load_causal_lm(str(gpt2_two_eos_dir))
    assert eos_token_ids(lm, tok) == [tok.eos_token_id, im_end]

    # Rig the model to say <|im_end|> first: the final norm outputs a long copy of its (tied) embedding.
    with torch.no_grad():
        w = lm.transformer.wte.weight
        w[im_end] *= 10
        lm.transformer.ln_f.weight.zero_()
        lm.transformer.ln_f.bias.copy_(w[im_end] * 1e4)
    rigged = tmp_path / "rigged"
    lm.save_pretrained(rigged)
    for f in TOKENIZER_FILES:
        if (gpt2_two_eos_dir / f).exists():
            shutil.copy(gpt2_two_eos_dir / f, rigged / f)
    run(compose(SMALL + [f"model.path={rigged}", "generation.min_new_tokens=4", "eval.num_samples_to_log=0"]),
        tmp_path / "run")
    row = read_metrics(tmp_path / "run")[-1]
    # every response is the one token <|im_end|> and counts as ended by EOS (not cut at its length limit)
    assert row["train/response_length"] == 1.0 and row["train/truncated_frac"] == 0.0
    assert row["eval/response_length"] == 1.0 and row["eval/truncated_frac"] == 0.0


def test_truncate_responses_cuts_at_any_eos_id():
    from rlhf_exp.rollout import truncate_responses

    tokens = torch.tensor([[5, 7, 9, 9], [5, 8, 7, 9], [5, 5, 5, 5]])
    ids, mask = truncate_responses(tokens, torch.tensor([4, 4, 4]), [7, 8], pad_id=0)
    assert mask.sum(1).tolist() == [2, 2, 4]
    assert ids[0].tolist() == [5, 7, 0, 0] and ids[1].tolist() == [5, 8, 0, 0]


# ------------------------------------------------------------------------------------------------ probe cases
def test_model_folder_without_tokenizer_files_is_an_error(gpt2_hub_dir, tmp_path):
    bare = copy_model_only(gpt2_hub_dir, tmp_path / "bare")
    with pytest.raises(ModelNotAvailableError, match=r"model.path=.*without tokenizer files.*set model.tokenizer="):
        run(compose(SMALL + [f"model.path={bare}"]), tmp_path / "run")


def test_tokenizer_only_folder_is_accepted_as_model_tokenizer(gpt2_hub_dir, tmp_path):
    from transformers import AutoTokenizer

    bare = copy_model_only(gpt2_hub_dir, tmp_path / "bare")
    tok_dir = tmp_path / "tok"
    AutoTokenizer.from_pretrained(gpt2_hub_dir).save_pretrained(tok_dir)
    assert not (tok_dir / "config.json").exists()
    summary = run(compose(SMALL + [f"model.path={bare}", f"model.tokenizer={tok_dir}"]), tmp_path / "run")
    assert summary["status"] == "finished"
    # the shipped tokenizer-only folder of the embedded task
    shipped = TOKENIZER_DIR
    assert not (shipped / "config.json").exists()
    assert len(load_tokenizer(str(shipped), "model.tokenizer")) > 0


def test_tokenizer_files_copied_without_their_special_tokens_are_an_error(gpt2_hub_dir, tmp_path):
    """gpt2's tokenizer_config.json names no special tokens (config.json's model_type supplies them): its tokenizer
    files copied alone load as a tokenizer without EOS."""
    tok_dir = copy_tokenizer_only(gpt2_hub_dir, tmp_path / "tok")
    with pytest.raises(ModelNotAvailableError, match=r"model.tokenizer=.*neither a pad nor an EOS.*save_pretrained"):
        load_tokenizer(str(tok_dir), "model.tokenizer")


def test_folder_without_tokenizer_files_as_model_tokenizer_is_an_error(gpt2_hub_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotAvailableError, match=r"model.tokenizer=.*has no tokenizer files"):
        run(compose(SMALL + [f"model.path={gpt2_hub_dir}", f"model.tokenizer={empty}"]), tmp_path / "run")


def test_tokenizer_larger_than_the_embeddings_is_an_error(gpt2_hub_dir, tmp_path):
    # the embedded task's tokenizer (1536 tokens) on the 320-row GPT-2: ids past the table
    with pytest.raises(ModelNotAvailableError, match=r"tokenizer \(model.tokenizer\) has 1536 tokens but the model "
                                                     r"\(model.path\) has only 320 embeddings"):
        run(compose(SMALL + [f"model.path={gpt2_hub_dir}", f"model.tokenizer={TOKENIZER_DIR}"]),
            tmp_path / "run")


def test_tokenizer_of_another_model_is_an_error(gpt2_hub_dir, tmp_path):
    # the 320-token GPT-2 tokenizer on the embedded 1536-row policy
    with pytest.raises(ModelNotAvailableError, match="not the model's tokenizer"):
        run(compose(SMALL + [f"model.tokenizer={gpt2_hub_dir}"]), tmp_path / "run")
    with pytest.raises(ModelNotAvailableError, match="not the model's tokenizer"):
        run(compose(SMALL + ["objective=sft", f"model.tokenizer={gpt2_hub_dir}"]), tmp_path / "run2")


def test_sequence_classifier_as_reference_is_an_error(gpt2_hub_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    clf = tmp_path / "clf"
    AutoModelForSequenceClassification.from_pretrained(gpt2_hub_dir, num_labels=1).save_pretrained(clf)
    with pytest.raises(ModelNotAvailableError, match=r"model.ref_path=.* is a GPT2ForSequenceClassification.*"
                                                     r"reward_model=learned"):
        run(compose(SMALL + [f"model.path={gpt2_hub_dir}", f"model.ref_path={clf}"]), tmp_path / "run")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_safetensors_names_the_file_and_option(gpt2_hub_dir, tmp_path, damage):
    broken = tmp_path / "broken"
    shutil.copytree(gpt2_hub_dir, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 10)
    with pytest.raises(ModelNotAvailableError, match=r"model.path=.*model.safetensors.*truncated or corrupted"):
        run(compose(SMALL + [f"model.path={broken}"]), tmp_path / "run")


def test_model_path_that_does_not_exist_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match=r"model.path='models/gpt2' is neither a local directory"):
        run(compose(SMALL + ["model.path=models/gpt2"]), tmp_path / "run")
    with pytest.raises(ModelNotAvailableError, match="no such directory"):
        run(compose(SMALL + [f"model.path={tmp_path / 'nope' / 'gpt2'}"]), tmp_path / "run2")
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotAvailableError, match="is a file; set model.path to the model's directory"):
        run(compose(SMALL + [f"model.path={tmp_path / 'weights.safetensors'}"]), tmp_path / "run3")
