"""The embedded task: review generator, lexicon scorer, derived data, splits, and the shipped checkpoints."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from rlhf_exp.task import ASSET_DIR, POLICY_DIR, REWARD_DIR, TOKENIZER_DIR
from rlhf_exp.task import reviews as R

S = R.score_text


# ---------------------------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------------------------


def test_generator_is_deterministic_in_seed():
    a, b, c = R.generate_reviews(300, 0), R.generate_reviews(300, 0), R.generate_reviews(300, 1)
    assert a == b
    assert [r.text for r in a] != [r.text for r in c]
    assert len({r.text for r in a} & {r.text for r in c}) < 10


def test_reviews_are_balanced_bounded_and_graded():
    rs = R.generate_reviews(4000, 3)
    assert 0.45 <= sum(r.label for r in rs) / len(rs) <= 0.55
    assert all(R.MIN_WORDS <= len(r.text.split()) <= R.MAX_WORDS for r in rs)
    assert all(abs(r.score) >= R.MIN_ABS_SCORE and r.label == int(r.score > 0) for r in rs)
    assert all(r.text[0].isupper() and r.text[-1] in ".!" for r in rs)
    mild = sum(abs(r.score) <= 1.5 for r in rs) / len(rs)
    strong = sum(abs(r.score) >= 6 for r in rs) / len(rs)
    mixed = sum(", but " in r.text or r.text.startswith(("Although", "While")) for r in rs) / len(rs)
    assert mild > 0.05 and strong > 0.1 and mixed > 0.1
    assert len({r.text.split()[0] for r in rs}) > 20   # varied openings


def test_score_text_agrees_with_the_grammar():
    rs = R.generate_reviews(3000, 11)
    assert sum((S(r.text) > 0) == (r.label == 1) for r in rs) / len(rs) >= 0.99
    assert sum(S(r.text) == r.score for r in rs) / len(rs) >= 0.99


@pytest.mark.parametrize("better,worse", [
    ("The acting was great.", "The acting was good."),
    ("The acting was really great.", "The acting was great."),
    ("The acting was good.", "The acting was fairly good."),
    ("The plot was a bit dull.", "The plot was dull."),
    ("The plot was not bad.", "The plot was bad."),
    ("The plot was bad, but the acting was great.", "The acting was great, but the plot was bad."),
    ("I really enjoyed the soundtrack.", "I enjoyed the soundtrack."),
    ("I give it 8/10.", "I give it 6/10."),
])
def test_score_text_orders(better, worse):
    assert S(better) > S(worse)


@pytest.mark.parametrize("text,sign", [
    ("The acting was great.", 1), ("The acting was not great.", -1), ("The acting wasn't great.", -1),
    ("The plot was not bad.", 1), ("The ending was far from perfect.", -1),
    ("The plot was dull, but the acting was brilliant.", 1), ("The acting was brilliant, but the plot was awful.", -1),
    ("Although the plot was thin, the acting was superb.", 1), ("I did not enjoy the ending.", -1),
    ("I was not impressed.", -1), ("What a masterpiece!", 1), ("It was a bit of a mess.", -1),
    ("I would recommend it to anyone.", 1), ("I would not recommend it.", -1), ("Avoid this one.", -1),
    ("A waste of two hours.", -1), ("You will not regret it.", 1), ("3/10.", -1), ("9 out of 10.", 1),
    ("The story kept me guessing until the end.", 1), ("The jokes fell flat.", -1),
    ("I watched this last night.", 0), ("The acting was", 0), ("", 0),
])
def test_score_text_rules(text, sign):
    s = S(text)
    assert (s > 0) - (s < 0) == sign, (text, s)


def test_neutral_sentences_and_prefix_scores():
    assert all(S(t) == 0 for t in R.NEUTRAL)
    for r in R.generate_reviews(50, 5):
        ends = list(range(1, len(r.text) + 1))
        assert R.prefix_scores(r.text, ends) == [S(r.text[:e]) for e in ends]


# ---------------------------------------------------------------------------------------------------------------
# Derived data and splits
# ---------------------------------------------------------------------------------------------------------------


def test_preference_pairs():
    pairs = R.preference_pairs(300, 0)
    assert pairs == R.preference_pairs(300, 0)
    assert all(set(p) == {"prompt", "chosen", "rejected"} for p in pairs)
    for p in pairs:
        assert 2 <= len(p["prompt"].split()) <= 5 and p["chosen"][0] == " " and p["rejected"][0] == " "
        assert p["chosen"] != p["rejected"]
        assert S(p["prompt"] + p["chosen"]) - S(p["prompt"] + p["rejected"]) >= R.PAIR_MARGIN
    assert sum(S(p["prompt"] + p["chosen"]) > 0 > S(p["prompt"] + p["rejected"]) for p in pairs) / len(pairs) > 0.6
    assert len({p["prompt"] for p in pairs}) > 50


def test_unpaired_examples():
    ex = R.unpaired_examples(1000, 0)
    assert 0.4 <= sum(e["label"] for e in ex) / len(ex) <= 0.6
    assert all(isinstance(e["label"], bool) and e["completion"][0] == " " for e in ex)
    assert all((S(e["prompt"] + e["completion"]) > 0) == e["label"] for e in ex)


def _texts(name: str, n: int) -> set[str]:
    data = R.split_data(name, n)
    kind = R.SPLITS[name][0]
    if kind == "sft":
        return set(data)
    if kind in ("classifier", "prompts"):
        return {r.text for r in data}
    if kind == "preference":
        return {p["prompt"] + p[k] for p in data for k in ("chosen", "rejected")}
    return {e["prompt"] + e["completion"] for e in data}


@pytest.mark.parametrize("kind", ["sft", "classifier", "prompts", "preference", "unpaired"])
def test_splits_are_disjoint_and_deterministic(kind):
    train, held = _texts(f"{kind}_train", 1000), _texts(f"{kind}_eval", 150)
    assert train and held and not train & held
    assert {R.split_of(t) for t in train} == {"train"} and {R.split_of(t) for t in held} == {"eval"}
    assert R.split_data(f"{kind}_eval", 20) == R.split_data(f"{kind}_eval", 20)


def test_split_streams_differ():
    seeds = {R.split_seed(name, s) for name in R.SPLITS for s in (0, 1)}
    assert len(seeds) == 2 * len(R.SPLITS)
    assert R.split_data("sft_train", 50) != R.split_data("sft_train", 50, seed=1)
    assert R.split_data("sft_train", 50) != [r.text for r in R.split_data("classifier_train", 50)]
    with pytest.raises(KeyError):
        R.split_data("nope_train", 1)


# ---------------------------------------------------------------------------------------------------------------
# Shipped checkpoints
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def reward():
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(REWARD_DIR).eval()


@pytest.fixture(scope="module")
def policy():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(POLICY_DIR).eval()


def test_tokenizers_load_and_agree(tokenizer):
    from transformers import AutoTokenizer

    assert tokenizer.is_fast and tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == "<|endoftext|>"
    text = "The acting wasn't great, but 8/10."
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.eos_token_id not in ids   # no BOS/EOS added: prompts are bare review prefixes
    assert tokenizer.decode(ids) == text
    for d in (POLICY_DIR, REWARD_DIR):
        assert AutoTokenizer.from_pretrained(d)(text)["input_ids"] == ids
        for f in ("tokenizer.json", "tokenizer_config.json"):
            assert (d / f).read_bytes() == (TOKENIZER_DIR / f).read_bytes()


def test_policy_checkpoint(policy, tokenizer):
    from transformers import GPT2LMHeadModel

    assert isinstance(policy, GPT2LMHeadModel)
    cfg = policy.config
    assert cfg.vocab_size == len(tokenizer) and cfg.eos_token_id == tokenizer.eos_token_id
    assert cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.1   # deliberate: the loop turns dropout off
    assert policy.generation_config.eos_token_id == policy.generation_config.pad_token_id == tokenizer.eos_token_id
    torch.manual_seed(0)
    enc = tokenizer(["The acting was"] * 8, return_tensors="pt")
    out = policy.generate(**enc, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=16)
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    assert all(t.startswith("The acting was ") and len(t.split()) >= 4 for t in texts)


def test_reward_checkpoint_ranks_sentiment(reward, tokenizer):
    from transformers import GPT2ForSequenceClassification

    assert isinstance(reward, GPT2ForSequenceClassification)
    assert reward.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}
    assert reward.config.pad_token_id == tokenizer.pad_token_id
    texts = ["The acting was superb and the plot kept me guessing until the end. Highly recommended.",
             "The plot was dull and the acting was wooden. A waste of two hours.",
             "The acting was not great.", "The plot was thin, but the acting was brilliant.", "The acting was"]
    with torch.no_grad():
        batch = reward(**tokenizer(texts, padding=True, return_tensors="pt")).logits
        alone = torch.cat([reward(**tokenizer(t, return_tensors="pt")).logits for t in texts])
    pos = batch[:, 1]
    assert pos[0] > 1 > -1 > pos[1]
    assert pos[2] < 0 < pos[3]
    assert abs(pos[4]) < 1   # neutral text: a reward near 0
    torch.testing.assert_close(batch, alone, atol=1e-4, rtol=0)   # right padding is exact
    tokenizer.padding_side = "left"   # left padding without position ids: scores shift a little, signs hold
    try:
        with torch.no_grad():
            left = reward(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    finally:
        tokenizer.padding_side = "right"
    assert torch.equal(left[:4, 1] > 0, pos[:4] > 0)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_manifest_matches_files():
    manifest = json.loads((ASSET_DIR / "manifest.json").read_text())
    on_disk = {str(p.relative_to(ASSET_DIR)) for p in ASSET_DIR.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for rel, digest in manifest["files"].items():
        assert _sha(ASSET_DIR / rel) == digest, rel
    m = manifest["metrics"]
    assert m["reward_acc_full"] >= 0.97 and m["reward_acc_fragments"] >= 0.90
    assert 0.3 <= m["sample_positive_share"] <= 0.7
    for d in (TOKENIZER_DIR, POLICY_DIR, REWARD_DIR):
        assert sum(p.stat().st_size for p in d.iterdir()) < 10 * 2**20


# ---------------------------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------------------------


def test_quick_build(tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_exp.task import build

    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    manifest = build.main(["--out", str(tmp_path), "--quick"])
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, det)
    assert manifest == json.loads((tmp_path / "manifest.json").read_text())
    assert all(_sha(tmp_path / rel) == d for rel, d in manifest["files"].items())
    tok = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "reward")
    assert rm.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"} and len(tok) == manifest["build"]["vocab_size"]
    assert len(manifest["samples"]) == 5
    for d in ("policy", "reward"):   # trained with gelu_new, written with its fused equal
        assert json.loads((tmp_path / d / "config.json").read_text())["activation_function"] == "gelu_pytorch_tanh"


def test_shipped_checkpoints_use_the_fused_gelu_with_the_same_outputs():
    """The shipped configs name gelu_pytorch_tanh (one fused op); the weights were trained with gelu_new, the same
    tanh approximation computed op by op: policy and reward logits agree to 1e-4 (measured: 6.7e-6 on the policy)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    ids = torch.randint(1, 1500, (4, 24), generator=torch.Generator().manual_seed(0))
    for cls, d in ((AutoModelForCausalLM, POLICY_DIR), (AutoModelForSequenceClassification, REWARD_DIR)):
        fused = cls.from_pretrained(d).eval()
        assert fused.config.activation_function == "gelu_pytorch_tanh"
        unfused = cls.from_pretrained(d, activation_function="gelu_new").eval()
        with torch.no_grad():
            a, b = fused(ids).logits, unfused(ids).logits
        assert 0 < (a - b).abs().max() < 1e-4


@pytest.mark.slow
def test_full_build_reproduces_shipped_checkpoints(tmp_path):
    """A fresh full build (minutes) is byte-identical to the shipped one (same library versions and threads)."""
    from rlhf_exp.task import build

    shipped = json.loads((ASSET_DIR / "manifest.json").read_text())
    fresh = build.main(["--out", str(tmp_path), "--threads", str(shipped["build"]["threads"])])
    if fresh["versions"] != shipped["versions"]:
        pytest.skip(f"library versions differ from the shipped build: {fresh['versions']} vs {shipped['versions']}")
    assert fresh["files"] == shipped["files"]
    assert (tmp_path / "manifest.json").read_bytes() == (ASSET_DIR / "manifest.json").read_bytes()
