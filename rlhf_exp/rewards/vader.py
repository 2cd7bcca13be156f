"""VADER (Hutto & Gilbert, 2014): a lexicon and rule-based sentiment analyser, as a reward that needs no model.

The ``vaderSentiment`` package ships its lexicon, so ``reward_model=vader`` runs offline on CPU in microseconds per
text. ``polarity_scores`` gives ``compound`` (a normalised sum of word valences in ``[-1, 1]``) and the shares of
positive, negative and neutral words ``pos``, ``neg``, ``neu`` (each in ``[0, 1]``); the reward is one of them.
"""
from __future__ import annotations

from typing import Any, Sequence

from rlhf_exp.rewards.base import RewardModel, RewardOutput

FIELDS = ("compound", "pos", "neg", "neu")
INPUTS = ("prompt+completion", "completion")
POSITIVE_THRESHOLD = 0.05  # VADER's documented cut-off: compound >= 0.05 is positive, <= -0.05 negative


class VaderReward(RewardModel):
    """Score texts with VADER's ``SentimentIntensityAnalyzer``.

    Args:
        field: ``compound`` | ``pos`` | ``neg`` | ``neu`` (the ``polarity_scores`` entry that is the score).
        input: score ``prompt+completion`` or the ``completion`` alone.
    Extras: ``positive_frac`` (1 where compound >= 0.05, VADER's positive cut-off; comparable to the classifier's
        ``positive_frac``) and ``compound`` when the score is another field.
    """

    def __init__(self, field: str = "compound", input: str = "prompt+completion", name: str = "vader",
                 option: str = "reward_model"):
        if field not in FIELDS:
            raise ValueError(f"{option}.field={field!r} is not one of {', '.join(FIELDS)}.")
        if input not in INPUTS:
            raise ValueError(f"{option}.input={input!r} is not one of {', '.join(INPUTS)}.")
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as e:
            raise ImportError("reward_model=vader needs the vaderSentiment package (a core dependency of rlhf_exp): "
                              "pip install vaderSentiment") from e
        self.analyzer = SentimentIntensityAnalyzer()
        self.field = field
        self.input = input
        self.name = name

    def score(self, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> RewardOutput:
        texts = [c if self.input == "completion" else p + c for p, c in zip(prompts, completions)]
        polarity = [self.analyzer.polarity_scores(t) for t in texts]
        extras = {"positive_frac": [float(s["compound"] >= POSITIVE_THRESHOLD) for s in polarity]}
        if self.field != "compound":
            extras["compound"] = [s["compound"] for s in polarity]
        return RewardOutput(scores=[s[self.field] for s in polarity], extras=extras)
