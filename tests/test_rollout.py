"""The rollout engine component without vLLM: backend selection and its config checks, the sampler-gap math (TIS),
the objectives' use of the weights, and the weights a vLLM engine is sent (full and LoRA-merged).

The tests that run a vLLM engine are in tests/test_vllm.py (``make test-vllm``)."""
import importlib.util

import pytest
import torch

from rlhf_exp.config import ConfigError, validate
from rlhf_exp.rollout.correction import logprob_gap, truncated_importance_weights
from rlhf_exp.rollout.vllm_engine import check_full_load, hf_weights_for_vllm
from tests.conftest import compose, objective_from_yaml

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.parametrize("overrides, message", [
    (["generation.backend=sglang"], "generation.backend must be one of hf, vllm"),
    (["generation.vllm.importance_correction=true"], "generation.vllm.importance_correction=true needs "
                                                       "generation.backend=vllm"),
    (["generation.vllm.importance_cap=0.5"], "generation.vllm.importance_cap must be >= 1"),
    (["generation.vllm.gpu_memory_utilization=1.5"], "generation.vllm.gpu_memory_utilization must be in (0, 1]"),
    (["generation.vllm.dtype=fp8"], "generation.vllm.dtype must be one of auto, float32, bfloat16, float16"),
    (["generation.vllm.max_model_len=0"], "generation.vllm.max_model_len must be an integer >= 1 or null"),
    (["generation.vllm.tensor_parallel_size=2"], "generation.vllm.tensor_parallel_size must be 1"),
    (["generation.vllm.kv_cache_gb=0"], "generation.vllm.kv_cache_gb must be > 0 or null"),
])
def test_backend_settings_are_checked_before_anything_loads(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(compose(overrides))


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_backend_vllm_without_vllm_names_the_install_route():
    with pytest.raises(ConfigError, match=r"pip install -e \.\[vllm\].*make test-vllm"):
        validate(compose(["generation.backend=vllm"]))


def test_default_backend_is_hf_and_the_loop_holds_engine_scorer_collector(tmp_path):
    from rlhf_exp.rollout.collect import RolloutCollector
    from rlhf_exp.rollout.engine import HFGenerator
    from rlhf_exp.rollout.scoring import Scorer
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.train.online import OnlineTrainer

    cfg = compose(["logger=none", "train.batch_size=4", "train.mini_batch_size=4", "dataset.eval_size=4",
                   "dataset.train_size=16", "generation.max_new_tokens=4"])
    assert cfg.generation.backend == "hf"
    tr = OnlineTrainer(cfg, tmp_path, Tracker(tmp_path, cfg.logger, {}, "t", enabled=False))
    assert isinstance(tr.rollouts.engine, HFGenerator) and isinstance(tr.rollouts.scorer, Scorer)
    assert isinstance(tr.rollouts.collector, RolloutCollector) and tr.rollouts.collector.engine is tr.rollouts.engine
    assert tr.rollouts.scorer.policy is tr.policy and tr.rollouts.scorer.ref is tr.ref
    batch, info = tr.rollout(tr.eval_prompts[:4], torch.full((4,), 4), tr.sampling)
    assert "sampler_logprobs" not in batch            # the HF sampler is the scored policy
    assert tr._sampler_correction(batch) == {}


def test_logprob_gap_and_truncated_importance_weights():
    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    samp = torch.tensor([[-1.5, -1.0, 9.0], [-0.5, -2.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert torch.equal(logprob_gap(old, samp, mask), torch.tensor([[0.5, 1.0, 0.0], [0.0, 1.5, 0.0]]))
    w = truncated_importance_weights(old, samp, mask, cap=2.0)
    expected = torch.tensor([[min(torch.exp(torch.tensor(0.5)).item(), 2.0), torch.exp(torch.tensor(-1.0)).item(), 1.0],
                             [1.0, 2.0, 1.0]])   # exp(1.5) = 4.48 is capped at 2; padding gets 1
    assert torch.allclose(w, expected)
    assert not w.requires_grad
    with pytest.raises(ValueError, match="importance_cap"):
        truncated_importance_weights(old, samp, mask, cap=0.5)


def _grpo_minibatch(b=4, T=5):
    torch.manual_seed(0)
    mask = torch.ones(b, T, dtype=torch.long)
    mask[0, 3:] = 0
    old = -torch.rand(b, T)
    mb = {"response_mask": mask, "old_logprobs": old, "ref_logprobs": old.clone(),
          "advantages": torch.randn(b, 1) * mask, "ends_with_eos": torch.ones(b)}
    return mb


def test_importance_correction_scales_each_tokens_policy_term():
    """TIS: the clipped surrogate of every token times its weight (verl's ``pg_losses * tis``), for token and
    sequence advantages; an objective with a sequence ratio refuses the per-token weights."""
    from rlhf_exp.modeling import ResponseOutput

    obj = objective_from_yaml("grpo", max_new_tokens=5)
    mb = _grpo_minibatch()
    logprobs = (mb["old_logprobs"] + 0.3 * torch.randn_like(mb["old_logprobs"])).requires_grad_()
    out = ResponseOutput(logprobs=logprobs, entropy=None, values=None, logits=None)
    w = torch.rand_like(logprobs) * 2
    loss_w, _ = obj.loss(out, {**mb, "tis_weight": w}, 0.0)
    # the same per-token surrogates, weighted, aggregated as the objective does
    ratio = torch.exp(logprobs - mb["old_logprobs"])
    A = mb["advantages"]
    low = obj.loss_params.cliprange
    high = low if obj.loss_params.cliprange_high is None else obj.loss_params.cliprange_high
    per_tok = torch.maximum(-A * ratio, -A * ratio.clamp(1 - low, 1 + high)) * w
    assert torch.allclose(loss_w, obj.aggregate(per_tok, mb["response_mask"]), atol=1e-6)
    loss_1, _ = obj.loss(out, {**mb, "tis_weight": torch.ones_like(w)}, 0.0)
    loss_0, _ = obj.loss(out, mb, 0.0)
    assert torch.allclose(loss_1, loss_0)

    reinforce = objective_from_yaml("reinforce", max_new_tokens=5)
    seq = {**mb, "advantages": torch.randn(4), "tis_weight": w}
    expect = reinforce.importance_corrected(seq)["advantages"]
    assert expect.shape == (4, 5) and torch.allclose(expect, seq["advantages"].unsqueeze(1) * w)
    ppo_seq = objective_from_yaml("ppo_seq", max_new_tokens=5)
    with pytest.raises(ValueError, match="objective=ppo_seq here uses a sequence-level ratio"):
        ppo_seq.loss(out, {**mb, "advantages": torch.randn(4), "tis_weight": w}, 0.0)


def test_weights_sent_to_the_engine_full_and_lora_merged(tiny_gpt2_dir):
    """Full fine-tuning: every parameter once (GPT-2's tied lm_head is the embedding). LoRA: the merged weights under
    the plain checkpoint's names, equal to peft's merge_and_unload (GPT-2's Conv1D is fan_in_fan_out), and the
    trained model is left unmerged."""
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    full = dict(hf_weights_for_vllm(lm))
    assert "lm_head.weight" not in full and "transformer.wte.weight" in full
    assert set(full) == {n for n, _ in lm.named_parameters()}

    peft_lm = get_peft_model(copy.deepcopy(lm), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                                                           fan_in_fan_out=True))
    with torch.no_grad():
        for n, p in peft_lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)          # a trained adapter (B starts at 0)
    before = {n: p.clone() for n, p in peft_lm.named_parameters()}
    merged = dict(hf_weights_for_vllm(peft_lm))
    reference = copy.deepcopy(peft_lm).merge_and_unload().state_dict()
    assert set(merged) == set(full)
    for n, v in merged.items():
        assert torch.allclose(v, reference[n], atol=1e-6), n
    assert not torch.allclose(merged["transformer.h.0.attn.c_attn.weight"], full["transformer.h.0.attn.c_attn.weight"])
    for n, p in peft_lm.named_parameters():
        assert torch.equal(p, before[n]), n


def test_a_partial_weight_load_is_an_error():
    check_full_load({"a", "b"}, {"a", "b"}, ["a", "b"])
    check_full_load({"a", "b"}, None, ["a"])         # a loader that does not report
    with pytest.raises(RuntimeError, match=r"left 1 vLLM parameter\(s\) unloaded \(b\)"):
        check_full_load({"a", "b"}, {"a"}, ["a"])


def test_importance_correction_with_a_sequence_ratio_objective_fails_before_generating(tmp_path):
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.train.online import OnlineTrainer

    cfg = compose(["logger=none", "objective=ppo_seq", "generation.backend=vllm", "dataset.eval_size=4",
                   "generation.vllm.importance_correction=true", "dataset.train_size=16"])
    with pytest.raises(ValueError, match="objective=ppo_seq here uses a sequence-level ratio"):
        OnlineTrainer(cfg, tmp_path, Tracker(tmp_path, cfg.logger, {}, "t", enabled=False))
