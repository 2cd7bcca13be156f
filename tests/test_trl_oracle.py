"""Our offline losses agree with TRL's trainers on the same batch (TRL as an oracle for the whole computation:
tokenisation, masks, padding, sequence log-probs, reference, loss).

TRL pads prompt + completion on the right without position ids; we left-pad the prompt and derive position ids from
the mask, so agreement also checks that padding does not change the log-probs. Skipped when TRL's trainer API is
not the 1.x one these tests were written against.
"""
import copy

import pytest
import torch

trl = pytest.importorskip("trl")
if int(trl.__version__.split(".")[0]) < 1:  # pragma: no cover
    pytest.skip("TRL < 1.0: a different trainer API", allow_module_level=True)

from datasets import Dataset  # noqa: E402

from rlhf_exp.modeling import PolicyModel, load_causal_lm, load_tokenizer  # noqa: E402
from rlhf_exp.objectives.offline_base import Context  # noqa: E402
from rlhf_exp.task import POLICY_DIR, reviews  # noqa: E402
from tests.conftest import compose, objective_from_yaml  # noqa: E402

N = 8


@pytest.fixture(scope="module")
def models():
    tok = load_tokenizer(str(POLICY_DIR))
    ref = load_causal_lm(str(POLICY_DIR))
    policy = copy.deepcopy(ref)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():                          # a policy that differs from the reference
        for p in policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return tok, policy, ref


def _args(cls, tmp_path, **kw):
    # bf16 and gradient checkpointing are TRL's defaults; off here (CPU, float32 comparison).
    return cls(output_dir=str(tmp_path), per_device_train_batch_size=N, bf16=False, gradient_checkpointing=False,
               report_to=[], use_cpu=True, save_strategy="no", **kw)


def _trl_loss(trainer) -> float:
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


def _our_loss(objective, records, tok, policy, ref, **settings) -> float:
    obj = objective_from_yaml(objective, **settings)
    items = obj.encode(records, tok)
    ctx = Context(device=torch.device("cpu"), pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    with torch.no_grad():
        loss, _ = obj.loss(PolicyModel(policy).eval(), PolicyModel(ref).eval(), items, ctx)
    return float(loss)


@pytest.mark.parametrize("loss_type,smoothing", [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.2)])
def test_dpo_matches_trl(models, tmp_path, loss_type, smoothing):
    from trl import DPOConfig, DPOTrainer

    tok, policy, ref = models
    pairs = reviews.split_data("preference_train", N, 0)
    trainer = DPOTrainer(model=policy, ref_model=ref, processing_class=tok, train_dataset=Dataset.from_list(pairs),
                         args=_args(DPOConfig, tmp_path, beta=0.3, loss_type=[loss_type], label_smoothing=smoothing))
    ours = _our_loss("dpo", pairs, tok, policy, ref, beta=0.3, loss_type=loss_type, label_smoothing=smoothing)
    assert ours == pytest.approx(_trl_loss(trainer), rel=1e-4, abs=1e-5)


def test_kto_matches_trl(models, tmp_path):
    from trl import KTOConfig, KTOTrainer

    tok, policy, ref = models
    examples = reviews.split_data("unpaired_train", N, 0)
    assert 0 < sum(e["label"] for e in examples) < N
    trainer = KTOTrainer(model=policy, ref_model=ref, processing_class=tok, train_dataset=Dataset.from_list(examples),
                         args=_args(KTOConfig, tmp_path, beta=0.3, desirable_weight=1.5))
    ours = _our_loss("kto", examples, tok, policy, ref, beta=0.3, desirable_weight=1.5)
    assert ours == pytest.approx(_trl_loss(trainer), rel=1e-4, abs=1e-5)


def test_reward_modelling_matches_trl(models, tmp_path):
    from trl import RewardConfig, RewardTrainer

    tok, _, _ = models
    pairs = [{**p, "margin": 0.25 * i} for i, p in enumerate(reviews.split_data("preference_train", N, 0))]
    obj = objective_from_yaml("reward", center_rewards_coefficient=0.01, use_margin=True)
    torch.manual_seed(0)
    model = obj.build_model(compose([f"model.path={POLICY_DIR}"]).model)   # random score head, seeded
    rm_tok = load_tokenizer(str(POLICY_DIR), padding_side="right")
    trainer = RewardTrainer(model=copy.deepcopy(model), processing_class=rm_tok, train_dataset=Dataset.from_list(pairs),
                            args=_args(RewardConfig, tmp_path, center_rewards_coefficient=0.01))
    items = obj.encode(pairs, rm_tok)
    ctx = Context(device=torch.device("cpu"), pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    with torch.no_grad():
        ours, _ = obj.loss(model.eval(), None, items, ctx)
    assert float(ours) == pytest.approx(_trl_loss(trainer), rel=1e-4, abs=1e-5)
