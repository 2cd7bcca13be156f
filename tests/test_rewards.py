"""Every reward kind on toy batches with known answers, the interface's checks, and the reward_model configs."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rlhf_exp.modeling import ModelNotAvailableError, load_tokenizer
from rlhf_exp.rewards import REWARD_KINDS, RewardError, RewardModel, RewardOutput, build_reward_model
from rlhf_exp.rewards.callable_reward import FunctionReward, resolve_callable
from rlhf_exp.rewards.composite import combine_token_scores
from rlhf_exp.rewards.functions import regex_match, repetition_penalty, target_length
from tests.conftest import compose

POS, NEG = "This movie was wonderful, I loved it!", "A terrible, boring film. I hated it."


def reward_cfg(option: str, *overrides: str):
    return compose([f"reward_model={option}", *overrides]).reward_model


# ---------------------------------------------------------------- functions used by the tests through import paths
def label_reward(prompts, completions, label, **kwargs):
    """Uses a dataset column: +1 where the completion's length parity matches the label."""
    return [1.0 if len(c) % 2 == lab else -1.0 for c, lab in zip(completions, label)]


def narrow_reward(completions, bonus):
    """No **kwargs: must be given only what it names."""
    return [len(c) + bonus for c in completions]


def maybe_reward(completions, **kwargs):
    return [None if c == "" else 1.0 for c in completions]


def logging_reward(completions, log_metric, log_extra, **kwargs):
    log_metric("calls", 1.0)
    log_metric("calls", 3.0)
    log_extra("n_chars", [len(c) for c in completions])
    log_extra("text", list(completions))
    return np.array([0.5] * len(completions), dtype=np.float32)


async def async_reward(completions, **kwargs):
    await asyncio.sleep(0)
    return [2.0] * len(completions)


def needs_state(completions, trainer_state):
    return [0.0] * len(completions)


def test_reward_module_functions_are_importable():
    assert resolve_callable("tests.test_rewards:label_reward") is label_reward
    assert resolve_callable("tests.test_rewards.label_reward") is label_reward
    assert resolve_callable("target_length") is target_length
    assert resolve_callable("rlhf_exp.rewards.functions:regex_match") is regex_match


def test_resolve_callable_errors_say_what_failed():
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg.mod' \\(no module named 'no_such_pkg'\\)"):
        resolve_callable("no_such_pkg.mod:f", "reward_model.fn")
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg'"):
        resolve_callable("no_such_pkg.mod.f", "reward_model.fn")
    with pytest.raises(ValueError, match="no attribute 'nope'.*target_length"):
        resolve_callable("nope", "reward_model.fn")
    with pytest.raises(ValueError, match="not a function"):
        resolve_callable("rlhf_exp.rewards.functions:UNITS")


# ---------------------------------------------------------------- the interface's checks
class Returns(RewardModel):
    name = "toy"

    def __init__(self, value, token_scores=None):
        self.value, self.token_scores = value, token_scores

    def score(self, prompts, completions, **columns):
        return RewardOutput(scores=self.value, token_scores=self.token_scores)


@pytest.mark.parametrize("value,match", [
    ([1.0], "shape \\(1,\\) for a batch of 2"),
    ([1.0, float("nan")], "NaN or inf at indices \\[1\\]"),
    ([float("inf"), 1.0], "NaN or inf at indices \\[0\\]"),
    (["1.0", 2.0], "non-numeric value at index 0: '1.0'"),
    ([None, 2.0], "non-numeric value at index 0: None"),
    ([True, 2.0], "non-numeric value at index 0: True"),
    (3.0, "returned float"),
    (torch.zeros(2, 2), "shape \\(2, 2\\)"),
])
def test_bad_scores_name_the_reward_and_the_problem(value, match):
    with pytest.raises(RewardError, match="Reward 'toy'.*" + match):
        Returns(value)(["p", "q"], ["a", "b"])


def test_numpy_and_tensor_scores_are_accepted():
    out = Returns(np.array([1, 2], dtype=np.float32))(["p", "q"], ["a", "b"])
    assert out.scores.tolist() == [1.0, 2.0] and out.scores.dtype == torch.float32
    assert Returns([np.float32(1.5), torch.tensor(2.0)])(["p", "q"], ["a", "b"]).scores.tolist() == [1.5, 2.0]


def test_bad_token_scores_and_prompt_count():
    with pytest.raises(RewardError, match="token scores of shape \\(3, 4\\); expected \\(2, T\\)"):
        Returns([0.0, 0.0], torch.zeros(3, 4))(["p", "q"], ["a", "b"])
    with pytest.raises(RewardError, match="NaN or inf in its per-token scores"):
        Returns([0.0, 0.0], torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))(["p", "q"], ["a", "b"])
    with pytest.raises(RewardError, match="got 1 prompts for 2 completions"):
        Returns([0.0, 0.0])(["p"], ["a", "b"])


# ---------------------------------------------------------------- vader
def test_vader_scores_clearly_positive_and_negative_sentences():
    r = build_reward_model(reward_cfg("vader", "reward_model.input=completion"))
    out = r(["", ""], [POS, NEG])
    assert out.scores[0] > 0.5 and out.scores[1] < -0.5
    assert out.extras["positive_frac"].tolist() == [1.0, 0.0]
    # pos field: the share of positive words, in [0, 1]; compound becomes an extra
    r = build_reward_model(reward_cfg("vader", "reward_model.field=pos", "reward_model.input=completion"))
    out = r(["", ""], [POS, NEG])
    assert out.scores[0] > 0.3 and out.scores[1] == 0.0 and "compound" in out.extras


def test_vader_input_prompt_plus_completion_includes_the_prompt():
    both = build_reward_model(reward_cfg("vader"))
    only = build_reward_model(reward_cfg("vader", "reward_model.input=completion"))
    prompts, completions = ["I hated this awful film. ", "I hated this awful film. "], ["The end.", "The end."]
    assert both(prompts, completions).scores[0] < -0.5
    assert only(prompts, completions).scores[0] == 0.0
    with pytest.raises(ValueError, match="reward_model.field='joy'"):
        build_reward_model(reward_cfg("vader", "reward_model.field=joy"))


# ---------------------------------------------------------------- function
def test_function_reward_receives_dataset_columns_and_completion_ids():
    seen = {}

    def spy(prompts, completions, completion_ids, **kwargs):
        seen.update(kwargs, prompts=prompts, completion_ids=completion_ids)
        return [0.0] * len(completions)

    FunctionReward(spy)(["p1", "p2"], ["ab", "abc"], completion_ids=[[1, 2], [3]], label=[0, 1], source=["x", "y"])
    assert seen["label"] == [0, 1] and seen["source"] == ["x", "y"]
    assert seen["prompts"] == ["p1", "p2"] and seen["completion_ids"] == [[1, 2], [3]]
    assert callable(seen["log_metric"]) and callable(seen["log_extra"])
    assert "trainer_state" not in seen

    r = build_reward_model(reward_cfg("function", "reward_model.fn=tests.test_rewards:label_reward"))
    out = r(["p", "p", "p"], ["ab", "abc", "abcd"], label=[0, 0, 1])
    assert out.scores.tolist() == [1.0, -1.0, -1.0]


def test_function_without_var_kwargs_gets_only_what_it_names():
    r = FunctionReward(narrow_reward, kwargs={"bonus": 10})
    assert r(["p", "q"], ["ab", "c"], completion_ids=[[1], [2]], label=[0, 1]).scores.tolist() == [12.0, 11.0]
    with pytest.raises(RewardError, match="needs argument\\(s\\) bonus.*completions.*label"):
        FunctionReward(narrow_reward)(["p"], ["ab"], label=[0])
    with pytest.raises(RewardError, match="trainer_state is a transformers TrainerState"):
        FunctionReward(needs_state)(["p"], ["ab"])
    with pytest.raises(RewardError, match="clash"):
        FunctionReward(label_reward, kwargs={"label": [1]})(["p"], ["ab"], label=[0])


def test_function_none_is_an_error_unless_none_value_is_set():
    with pytest.raises(RewardError, match="returned None.*indices \\[1\\].*reward_model.none_value=0.0"):
        FunctionReward(maybe_reward)(["p", "q"], ["a", ""])
    out = FunctionReward(maybe_reward, none_value=-0.5)(["p", "q", "r"], ["a", "", "b"])
    assert out.scores.tolist() == [1.0, -0.5, 1.0]
    assert out.extras["none_frac"].tolist() == [0.0, 1.0, 0.0]


def test_function_log_metric_log_extra_async_and_numpy():
    with pytest.warns(UserWarning, match="column 'text'"):
        out = FunctionReward(logging_reward)(["p", "q"], ["ab", "cde"])
    assert out.scores.tolist() == [0.5, 0.5]
    assert out.extras["calls"].tolist() == [2.0, 2.0]          # mean of the two calls, one value per completion
    assert out.extras["n_chars"].tolist() == [2.0, 3.0]
    assert FunctionReward(async_reward)(["p"], ["a"]).scores.tolist() == [2.0]


def test_shipped_functions_known_values():
    assert target_length(["a b", ""], completion_ids=[[1, 2, 3, 4], []], target=4) == [0.0, -1.0]
    assert target_length(["a b c d e f", "ab"], target=4, unit="words") == [-0.5, -0.75]
    assert target_length(["abcd", "ab"], target=2, unit="chars") == [-1.0, 0.0]
    with pytest.raises(ValueError, match="needs completion_ids"):
        target_length(["a"], target=2)
    assert repetition_penalty(["great great great great", "the film was good", "one"]) == pytest.approx(
        [-2 / 3, 0.0, 0.0])
    assert regex_match(["Great film.", "great film"], pattern=r"\.$") == [1.0, 0.0]
    assert regex_match(["  Yes  ", "yes sir"], pattern="yes", mode="fullmatch", flags="i", miss_reward=-1.0) == [
        1.0, -1.0]
    with pytest.raises(ValueError, match="unknown flag"):
        regex_match(["a"], pattern="a", flags="q")


@pytest.mark.parametrize("fn", [target_length, repetition_penalty, regex_match])
def test_shipped_functions_accept_trls_call(fn):
    """trl 1.16's GRPOTrainer._calculate_rewards calls reward functions with exactly these keyword arguments."""
    trl_kwargs = dict(prompts=["p", "q"], completions=["a b a b", "c."], completion_ids=[[1, 2, 1, 2], [3, 4]],
                      label=[0, 1], trainer_state=object(), log_extra=lambda *a: None, log_metric=lambda *a: None)
    out = fn(**trl_kwargs)
    assert len(out) == 2 and all(isinstance(v, float) for v in out)


def test_function_config_shipped_default_and_errors():
    cfg = reward_cfg("function")  # target_length with its defaults: target=16 tokens
    r = build_reward_model(cfg)
    assert r([""] * 2, ["x", "y"], completion_ids=[[1] * 16, [1] * 4]).scores.tolist() == [0.0, -0.75]
    r = build_reward_model(reward_cfg("function", "+reward_model.kwargs.target=4", "+reward_model.kwargs.unit=words"))
    assert r([""] * 2, ["a b c d", "a b"]).scores.tolist() == [0.0, -0.5]
    with pytest.raises(ValueError, match="reward_model.fn is not set"):
        build_reward_model(reward_cfg("function", "reward_model.fn=null"))
    with pytest.raises(ValueError, match="unknown option\\(s\\) targte"):
        build_reward_model(reward_cfg("function", "+reward_model.targte=3"))


# ---------------------------------------------------------------- composite
def test_combine_token_scores_rule():
    lengths = torch.tensor([3, 1])
    seq = torch.tensor([2.0, -1.0])
    tok = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.5, 9.0, 9.0, 9.0]])  # values past each end must not leak
    out = combine_token_scores([0.5, 2.0], [seq, torch.zeros(2)], [None, tok], lengths)
    expected = torch.tensor([[0.2, 0.4, 0.6 + 1.0, 0.0],
                             [1.0 - 0.5, 0.0, 0.0, 0.0]])
    assert torch.allclose(out, expected)


def test_composite_weights_parts_and_extras():
    cfg = OmegaConf.create({"kind": "composite", "parts": {
        "len": {"kind": "function", "fn": "target_length", "weight": 2.0, "kwargs": {"target": 4, "unit": "chars"}},
        "fmt": {"kind": "function", "fn": "regex_match", "weight": -1.0, "kwargs": {"pattern": "!$"}},
        "mood": {"kind": "vader", "weight": 0.0, "input": "completion"},
        "off": None,
    }})
    r = build_reward_model(cfg)
    out = r(["p", "q"], ["abcd!", "ab"])
    # len: [-0.25, -0.5]; fmt: [1, 0]; mood has weight 0 (only logged)
    assert out.scores.tolist() == pytest.approx([2 * -0.25 - 1.0, 2 * -0.5])
    assert out.extras["len"].tolist() == pytest.approx([-0.25, -0.5])
    assert out.extras["fmt"].tolist() == [1.0, 0.0]
    assert set(out.extras) == {"len", "fmt", "mood", "mood/positive_frac"}
    assert out.token_scores is None


def test_composite_with_a_per_token_part(tmp_path):
    cfg = compose(["reward_model=composite", "reward_model@reward_model.parts.sentiment=tiny_sentiment_tokens",
                   "reward_model.parts.length.weight=0.5", "generation.max_new_tokens=4"])
    r = build_reward_model(cfg.reward_model)
    tok = load_tokenizer(cfg.model.path)
    r.bind_policy_tokenizer(tok)
    completions = [" was a great film", " bad"]
    ids = [tok(c, add_special_tokens=False)["input_ids"] for c in completions]
    out = r(["The movie", "It"], completions, completion_ids=ids)
    sent = r.parts["sentiment"][1](["The movie", "It"], completions, completion_ids=ids)
    length = torch.tensor(target_length(completions, ids, target=4))
    assert torch.allclose(out.scores, sent.scores + 0.5 * length)
    expected = combine_token_scores([1.0, 0.5], [sent.scores, length], [sent.token_scores, None],
                                    torch.tensor([len(i) for i in ids]))
    assert torch.allclose(out.token_scores, expected)
    assert r.per_token


def test_composite_includes_any_registered_kind_by_name(monkeypatch):
    class Const(RewardModel):
        def score(self, prompts, completions, **columns):
            return [7.0] * len(completions)

    monkeypatch.setitem(REWARD_KINDS, "learned", lambda cfg: Const())
    r = build_reward_model({"kind": "composite", "parts": {"rm": {"kind": "learned", "weight": 0.5, "path": "x"}}})
    assert r(["p"], ["a"]).scores.tolist() == [3.5]


def test_composite_errors_name_the_part():
    with pytest.raises(ValueError, match="Unknown reward_model.parts.x.kind 'nope'"):
        build_reward_model({"kind": "composite", "parts": {"x": {"kind": "nope"}}})
    with pytest.raises(ValueError, match="reward_model.parts.x.weight must be a number"):
        build_reward_model({"kind": "composite", "parts": {"x": {"kind": "vader", "weight": "big"}}})
    with pytest.raises(ValueError, match="reward_model.parts.x: unknown option\\(s\\) feild"):
        build_reward_model({"kind": "composite", "parts": {"x": {"kind": "vader", "weight": 1.0, "feild": "pos"}}})
    with pytest.raises(ValueError, match="at least one part"):
        build_reward_model({"kind": "composite", "parts": {}})


def test_composite_command_line_forms_compose_and_build():
    cfg = reward_cfg("composite", "~reward_model.parts.length",
                     "+reward_model.parts.fmt={kind: function, fn: regex_match, weight: 0.5, kwargs: {pattern: '\\.$'}}")
    r = build_reward_model(cfg)
    assert set(r.parts) == {"sentiment", "fmt"}
    out = r(["The film", "The film"], [" was good.", " was good"])
    assert out.extras["fmt"].tolist() == [1.0, 0.0]
    assert torch.allclose(out.scores, out.extras["sentiment"] + 0.5 * out.extras["fmt"])


# ---------------------------------------------------------------- hf classifier
def test_distilbert_imdb_fails_fast_offline_with_the_download_command(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = reward_cfg("distilbert_imdb")
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="huggingface-cli download lvwerra/distilbert-imdb") as e:
        build_reward_model(cfg)
    assert time.perf_counter() - t0 < 10
    assert "reward_model.path" in str(e.value)
    # inside a composite the message names the part's option
    with pytest.raises(ModelNotAvailableError, match="reward_model.parts.sentiment.path"):
        build_reward_model(reward_cfg("composite", "reward_model@reward_model.parts.sentiment=distilbert_imdb"))


def test_classifier_scores_are_the_same_in_a_padded_batch_and_alone():
    r = build_reward_model(reward_cfg("tiny_sentiment"))
    prompts = ["The film", "I found the acting in this movie", "It"]
    completions = [" was great", " dull, slow and far too long for what it was", " was bad"]
    batch = r(prompts, completions).scores
    alone = torch.cat([r([p], [c]).scores for p, c in zip(prompts, completions)])
    assert torch.allclose(batch, alone, atol=1e-5)


def test_classifier_truncation_keeps_the_completion_by_default():
    prompt = "I watched this film with my friends last weekend and we talked about it for hours after"
    good, bad = " it was great, wonderful", " it was awful, terrible"
    left = build_reward_model(reward_cfg("tiny_sentiment", "reward_model.max_length=8"))
    right = build_reward_model(reward_cfg("tiny_sentiment", "reward_model.max_length=8",
                                          "reward_model.truncation_side=right"))
    s_left = left([prompt, prompt], [good, bad]).scores
    s_right = right([prompt, prompt], [good, bad]).scores
    assert s_left[0] - s_left[1] > 1.0            # the completion decides the score
    assert s_right[0] == s_right[1]               # the completion was cut away entirely
    with pytest.raises(ValueError, match="reward_model.truncation_side='middle'"):
        build_reward_model(reward_cfg("tiny_sentiment", "reward_model.truncation_side=middle"))
