"""A reward model trained by ``objective=reward`` (or any scalar-head sequence classifier): its single logit.

``reward_model=learned reward_model.path=<run dir>``: the path is the reward run's folder (its ``reward_model/``
inside is used) or the model folder itself. The model is ``AutoModelForSequenceClassification`` with
``num_labels=1``, scored through :class:`~rlhf_exp.rewards.hf_classifier.HFClassifierReward` on
``prompt + completion`` with the tokenizer saved beside it, exactly as the reward run scored its held-out pairs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rlhf_exp.modeling import ModelNotAvailableError
from rlhf_exp.rewards.base import RewardOutput
from rlhf_exp.rewards.hf_classifier import HFClassifierReward

RUN_SUBDIR = "reward_model"   # objective=reward saves its model here (rlhf_exp.objectives.reward_modelling)


def resolve_learned_path(path: str) -> str:
    """The model folder for ``reward_model.path``: a reward run's folder (with ``reward_model/``) or the model
    folder itself (with ``config.json``); anything else is an error that says which is expected."""
    if path is None or str(path).strip() == "":
        raise ModelNotAvailableError("reward_model=learned needs reward_model.path=<the folder of an objective=reward "
                                     "run, or the reward_model/ folder inside it>.")
    p = Path(str(path)).expanduser()
    if (p / RUN_SUBDIR / "config.json").exists():
        return str(p / RUN_SUBDIR)
    if (p / "config.json").exists():
        return str(p)
    if not p.exists():
        raise ModelNotAvailableError(f"reward_model.path={path!r} does not exist. Set it to the folder of an "
                                     f"objective=reward run (it holds {RUN_SUBDIR}/) or to that {RUN_SUBDIR}/ folder.")
    found = ", ".join(sorted(x.name for x in p.iterdir())[:12]) or "nothing"
    raise ModelNotAvailableError(f"reward_model.path={path!r} is neither a reward run folder (no {RUN_SUBDIR}/config.json) "
                                 f"nor a model folder (no config.json); it holds: {found}. Did the reward run finish "
                                 f"with train.save_model=true?")


class LearnedReward(HFClassifierReward):
    """The scalar logit of a one-label sequence classifier (no probability extras: one label has none)."""

    def __init__(self, path: str, batch_size: int = 64, max_length: int = 512, name: str = "learned",
                 input: str = "prompt+completion"):
        resolved = resolve_learned_path(path)
        super().__init__(path=resolved, label=0, output="logit", input=input, batch_size=batch_size,
                         max_length=max_length, name=name, option="reward_model.path")
        n = self.model.config.num_labels
        if n != 1:
            raise ValueError(f"reward_model=learned expects a scalar-head model (num_labels=1); {resolved} has "
                             f"num_labels={n}. For a classifier use reward_model.kind=hf_classifier with a label.")

    def score(self, prompts: Sequence[str], completions: Sequence[str], completion_ids: Any = None,
              **columns: Any) -> RewardOutput:
        out = super().score(prompts, completions, completion_ids=completion_ids, **columns)
        return RewardOutput(scores=out.scores, token_scores=out.token_scores)
