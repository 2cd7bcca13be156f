"""Real-model configs: offline they fail fast with what to download; with a local copy in the same Hugging Face format
(here tiny random models of the same architectures) they run unchanged. LoRA and the adapter-off reference."""
import json

import pytest
import torch

from rlhf_exp.__main__ import run
from rlhf_exp.data import DatasetError
from rlhf_exp.modeling import (
    AdapterDisabledReference, ModelNotAvailableError, PolicyModel, load_causal_lm, score_responses,
)
from rlhf_exp.rollout import pad_left
from tests.conftest import compose

SMALL = ["logger=none", "train.batch_size=8", "train.mini_batch_size=4", "eval.every=0", "dataset.eval_size=8",
         "generation.max_new_tokens=6", "train.steps=1", "train.save_model=false"]


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tiny_gpt2_dir, tmp_path_factory):
    """A random 2-layer Qwen2 (RoPE, grouped-query attention) with the tiny tokenizer, saved in HF format."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    d = tmp_path_factory.mktemp("tiny_qwen2")
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    Qwen2ForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
    return d


@pytest.mark.parametrize("overrides,match", [
    (["model=gpt2_imdb"], "huggingface-cli download lvwerra/gpt2-imdb"),
    (["model=gpt2"], "huggingface-cli download gpt2"),
    (["model=qwen2_5_0_5b_instruct"], "Qwen/Qwen2.5-0.5B-Instruct"),
    (["dataset=imdb"], "save_to_disk"),
])
def test_hub_configs_fail_fast_offline(tmp_path, overrides, match):
    with pytest.raises((ModelNotAvailableError, DatasetError), match=match):
        run(compose(SMALL + overrides), tmp_path)


def test_gpt2_config_runs_on_a_local_copy(tmp_path, tiny_gpt2_dir):
    summary = run(compose(SMALL + ["model=gpt2", f"model.path={tiny_gpt2_dir}"]), tmp_path)
    assert summary["status"] == "finished"


def test_qwen2_with_lora_and_gradient_checkpointing_on_a_local_copy(tmp_path, tiny_qwen2_dir):
    cfg = compose(SMALL + ["model=qwen2_5_0_5b_instruct", f"model.path={tiny_qwen2_dir}", "model.dtype=float32",
                           "train.steps=2", "train.save_model=true"])
    assert cfg.model.lora.r == 16 and cfg.model.gradient_checkpointing
    run(cfg, tmp_path)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows[0]["eval/kl"] == pytest.approx(0.0, abs=1e-6)   # LoRA starts as the identity (B = 0)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "policy")      # saved merged, loadable as a plain model


def test_rope_model_scores_left_padded_batch_like_single(tiny_qwen2_dir):
    policy = PolicyModel(load_causal_lm(str(tiny_qwen2_dir))).eval()
    prompts, responses = [[10, 11], [12, 13, 14, 15, 16]], [[30, 31, 32], [40, 41, 42]]
    pid, pm = pad_left(prompts, 0)
    rid, rm = torch.tensor(responses), torch.ones(2, 3, dtype=torch.long)
    batch = score_responses(policy, pid, pm, rid, rm).logprobs
    for i in range(2):
        alone = score_responses(policy, *pad_left([prompts[i]], 0), rid[i:i + 1], rm[i:i + 1]).logprobs
        assert torch.allclose(batch[i], alone[0], atol=1e-5)


def test_lora_reference_is_the_base_with_adapters_off(tiny_gpt2_dir, tmp_path):
    """After updates the LoRA policy moved, and its reference still scores exactly like the untouched base model."""
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.train.online import OnlineTrainer

    cfg = compose(SMALL + ["model=gpt2", f"model.path={tiny_gpt2_dir}", "model.lora.r=4", "train.lr=1e-2"])
    trainer = OnlineTrainer(cfg, tmp_path, Tracker(tmp_path, cfg.logger, {}, "t", enabled=False))
    assert isinstance(trainer.ref, AdapterDisabledReference)
    trainable = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.policy.parameters())
    assert trainable < 0.2 * total                                    # adapters (+ value head) only
    for step in (1, 2):
        trainer.train_step(step)
    base = PolicyModel(load_causal_lm(str(tiny_gpt2_dir))).eval()
    pid, pm = pad_left([[10, 11, 12], [13, 14]], 0)
    rid, rm = torch.tensor([[20, 21, 22, 23]] * 2), torch.ones(2, 4, dtype=torch.long)
    ref_lp = score_responses(trainer.ref, pid, pm, rid, rm).logprobs
    base_lp = score_responses(base, pid, pm, rid, rm).logprobs
    pol_lp = score_responses(trainer.policy, pid, pm, rid, rm).logprobs.detach()
    assert torch.allclose(ref_lp, base_lp, atol=1e-5)
    assert not torch.allclose(pol_lp, base_lp, atol=1e-4)


def test_imdb_config_runs_on_a_local_copy(tmp_path, tiny_gpt2_dir):
    import datasets

    rows = {"text": ["This movie was a delight from start to finish.", "The acting was wooden and the plot dull.",
                     "A gorgeous film with a haunting score.", "I want my two hours back, truly awful."] * 4,
            "label": [1, 0, 1, 0] * 4}
    d = tmp_path / "imdb"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows), "test": datasets.Dataset.from_dict(rows)}
                         ).save_to_disk(str(d))
    summary = run(compose(SMALL + ["dataset=imdb", f"dataset.path={d}"]), tmp_path / "run")
    assert summary["status"] == "finished"
    with pytest.raises(DatasetError, match="Columns found: text, label"):
        run(compose(SMALL + ["dataset=imdb", f"dataset.path={d}", "dataset.prompt_column=review"]), tmp_path / "x")


CHAT_TEMPLATE = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|endoftext|>assistant:{% endif %}")


def test_chat_template_wraps_prompts_for_instruct_models(tiny_gpt2_dir, tmp_path):
    """dataset.chat_template=true: the policy sees the user's turn in its template and the assistant's opening; the
    reward and logs see the plain prompt. A tokenizer without a template is a clear error."""
    from transformers import AutoTokenizer

    from rlhf_exp.data import load_prompt_data

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    cfg = {"kind": "tiny_reviews", "train_size": 4, "eval_size": 4, "prompt_min_tokens": 2, "prompt_max_tokens": 4,
           "seed": 0}
    plain = load_prompt_data(cfg, tok)
    with pytest.raises(DatasetError, match="no chat template"):
        load_prompt_data({**cfg, "chat_template": True}, tok)
    tok.chat_template = CHAT_TEMPLATE
    chat = load_prompt_data({**cfg, "chat_template": True}, tok)
    for p, c in zip(plain.eval, chat.eval):
        assert c.text == p.text
        assert tok.decode(c.ids) == f"<|endoftext|>user: {p.text}\n<|endoftext|>assistant:"
        assert c.ids.count(tok.eos_token_id) == 2            # the template's special tokens are tokens, not text

    from rlhf_exp.data import chat_records     # offline records (dpo, kto, sft with prompts) get the same wrapping
    recs = chat_records([{"prompt": "hi", "chosen": "a", "rejected": "b"}, {"prompt": "", "completion": "x"}], tok)
    assert recs == [{"prompt": "<|endoftext|>user: hi\n<|endoftext|>assistant:", "chosen": "a", "rejected": "b"},
                    {"prompt": "", "completion": "x"}]

    chat_dir = tmp_path / "chat_model"
    tok.save_pretrained(chat_dir)
    load_causal_lm(str(tiny_gpt2_dir)).save_pretrained(chat_dir)
    for objective in ("ppo", "dpo"):
        summary = run(compose(SMALL + [f"objective={objective}", "model=gpt2", f"model.path={chat_dir}",
                                       "dataset.chat_template=true", "train.batch_size=4", "dataset.eval_size=4",
                                       "dataset.offline_train_size=8", "dataset.offline_eval_size=4"]   # cut to the 64 positions, with a notice
                              if objective == "dpo" else
                              SMALL + ["model=gpt2", f"model.path={chat_dir}", "dataset.chat_template=true"]),
                      tmp_path / objective)
        assert summary["status"] == "finished"
        sample = json.loads((tmp_path / objective / "samples.jsonl").read_text().splitlines()[0])
        assert "assistant:" not in sample["prompt"]


def test_sequences_longer_than_the_model_are_a_clear_error(tiny_gpt2_dir, tmp_path):
    """The tiny GPT-2 has 64 positions: prompts of up to 8 tokens plus 60 new tokens do not fit."""
    with pytest.raises(ValueError, match=r"tokens long, but the 64 positions of model.path=.*less "
                                         r"generation.max_new_tokens=60"):
        run(compose(SMALL + ["model=gpt2", f"model.path={tiny_gpt2_dir}", "generation.max_new_tokens=60"]), tmp_path)
