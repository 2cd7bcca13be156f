"""A Hugging Face sequence classifier as the reward (``lvwerra/distilbert-imdb``, the embedded tiny sentiment model...).

The policy's text is re-tokenised with the classifier's own tokenizer. The score is the chosen label's raw logit
(the convention of the TRL IMDb example), its probability, or its log-probability.

Padding and truncation: batches are padded on the right (a GPT-2 classifier has absolute position embeddings and no
position ids are passed, so left padding would shift its positions; BERT-style models expect right padding too), and
texts longer than ``max_length`` classifier tokens lose their *beginning* by default (``truncation_side=left``), so
the completion the policy wrote is always what the classifier sees. ``truncation_side=right`` keeps the beginning
(the prompt), as the classifier's own training usually did; then a long prompt can hide the completion entirely.
``objective=reward`` trains with :func:`encode_texts` and left truncation too, so a learned reward scores exactly the
tokens it was trained on.

A classifier whose tokenizer has no pad token (GPT-2 as it ships) pads with its EOS token, and its
``config.pad_token_id`` is set to that id so that batches of more than one text can be scored.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

import torch

from rlhf_exp.modeling import (
    check_tokenizer_fits, disable_dropout, from_pretrained_checked, load_tokenizer, resolve_pretrained,
)
from rlhf_exp.rollout import pad_right
from rlhf_exp.rewards.base import RewardError, RewardModel, RewardOutput

OUTPUTS = ("logit", "prob", "log_prob")
INPUTS = ("prompt+completion", "completion")
SIDES = ("left", "right")


def encode_texts(tokenizer, texts: Sequence[str], max_length: int, truncation_side: str = "left") -> list[list[int]]:
    """Token ids of each text as a reward classifier reads it, cut to ``max_length`` tokens on ``truncation_side``
    (``left``: the beginning is dropped, the end of the response is kept). The one encoding used both to train a
    reward model (``objective=reward``) and to score with it."""
    side = tokenizer.truncation_side
    tokenizer.truncation_side = truncation_side
    try:
        return tokenizer(list(texts), truncation=True, max_length=int(max_length))["input_ids"]
    finally:
        tokenizer.truncation_side = side


def _refuse_a_new_head(model, info, resolved: str, option: str, path: str) -> None:
    """Refuse a checkpoint without the classification head: transformers then initialises the head at random (it
    reports those weights as missing) and the "reward" is noise. A causal language model (the policy's folder, say)
    is the usual case."""
    prefix = f"{model.base_model_prefix}."
    head = sorted(k for k in info.get("missing_keys", ()) if not str(k).startswith(prefix))
    if not head:
        return
    import json

    archs = []
    with contextlib.suppress(OSError, ValueError):
        archs = json.loads((Path(resolved) / "config.json").read_text()).get("architectures") or []
    arch = archs[0] if archs else type(model).__name__
    kind = " (a causal language model)" if arch.endswith(("LMHeadModel", "ForCausalLM")) else ""
    raise ValueError(f"{option}={path} is a {arch}{kind}, not a classifier: its checkpoint has no classification "
                     f"head ({', '.join(head)} would be random weights, so the reward would be noise). Point {option} "
                     f"at a sequence classifier (a model saved by AutoModelForSequenceClassification, such as a "
                     f"reward model trained with objective=reward: reward_model=learned).")


class HFClassifierReward(RewardModel):
    """Score texts with ``AutoModelForSequenceClassification``.

    Args:
        path: local directory or hub id.
        label: the label whose logit is the score, by name (``POSITIVE``) or index.
        output: ``logit`` | ``prob`` | ``log_prob``.
        input: score ``prompt+completion`` (the IMDb convention) or the ``completion`` alone.
        batch_size, max_length: scoring batch size and truncation length (classifier tokens).
        truncation_side: ``left`` (drop the beginning of long texts, keep the completion) or ``right``.
        per_token: also return per-token rewards: the change of the score as each response token is added,
            ``r_t = s(prompt + y_<=t) - s(prompt + y_<t)``, so that ``sum_t r_t = s(prompt + y) - s(prompt)``. Needs
            the policy tokenizer and ``completion_ids`` (the loop passes both).
    Extras: ``<label>_prob`` (probability of the label) and ``<label>_frac`` (1 where it is the argmax class).
    """

    def __init__(self, path: str, label: str | int = "POSITIVE", output: str = "logit",
                 input: str = "prompt+completion", batch_size: int = 64, max_length: int = 512,
                 name: str = "classifier", option: str = "reward_model.path", per_token: bool = False,
                 truncation_side: str = "left"):
        from transformers import AutoModelForSequenceClassification

        prefix = option.rsplit(".", 1)[0]  # reward_model, or reward_model.parts.<name> inside a composite
        self.prefix = prefix
        if output not in OUTPUTS:
            raise ValueError(f"{prefix}.output={output!r} is not one of {', '.join(OUTPUTS)}.")
        if input not in INPUTS:
            raise ValueError(f"{prefix}.input={input!r} is not one of {', '.join(INPUTS)}.")
        if truncation_side not in SIDES:
            raise ValueError(f"{prefix}.truncation_side={truncation_side!r} is not one of {', '.join(SIDES)}.")
        resolved = resolve_pretrained(path, option)
        self.name = name
        self.tokenizer = load_tokenizer(resolved, option=option, padding_side="right")
        self.truncation_side = truncation_side
        model, info = from_pretrained_checked(AutoModelForSequenceClassification, resolved, option, path,
                                              output_loading_info=True)
        _refuse_a_new_head(model, info, resolved, option, path)
        self.model = disable_dropout(model).eval()
        check_tokenizer_fits(self.model, self.tokenizer, option, option)
        for p in self.model.parameters():
            p.requires_grad_(False)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.label_index = self._label_index(label)
        self.label_name = str(self.model.config.id2label.get(self.label_index, self.label_index)).lower()
        self.output = output
        self.input = input
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.per_token = bool(per_token)

    def _label_index(self, label: str | int) -> int:
        id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        n = self.model.config.num_labels
        if isinstance(label, int) or (isinstance(label, str) and label.lstrip("-").isdigit()):
            idx = int(label)
            if not -n <= idx < n:
                raise ValueError(f"{self.prefix}.label={label} is out of range for a classifier with {n} labels.")
            return idx % n
        for idx, name in id2label.items():
            if name.lower() == str(label).lower():
                return idx
        raise ValueError(f"{self.prefix}.label={label!r} is not a label of this classifier. Its labels: "
                         f"{', '.join(f'{i}={v}' for i, v in sorted(id2label.items()))}.")

    def to(self, device: torch.device | str) -> "HFClassifierReward":
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def _logits(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            ids = encode_texts(self.tokenizer, texts[i:i + self.batch_size], self.max_length, self.truncation_side)
            input_ids, mask = pad_right(ids, self.tokenizer.pad_token_id, self.device)
            out.append(self.model(input_ids=input_ids, attention_mask=mask).logits.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.num_labels)

    def _output(self, logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=-1)[:, self.label_index]
        return {"logit": logits[:, self.label_index], "prob": logp.exp(), "log_prob": logp}[self.output]

    def score(self, prompts: Sequence[str], completions: Sequence[str], completion_ids: Any = None,
              **columns: Any) -> RewardOutput:
        texts = [c if self.input == "completion" else p + c for p, c in zip(prompts, completions)]
        logits = self._logits(texts)
        probs = torch.softmax(logits, dim=-1)[:, self.label_index]
        extras = {f"{self.label_name}_prob": probs,
                  f"{self.label_name}_frac": (logits.argmax(-1) == self.label_index).float()}
        scores = self._output(logits)
        token_scores = self._token_scores(prompts, completion_ids) if self.per_token else None
        return RewardOutput(scores=scores, token_scores=token_scores, extras=extras)

    def _token_scores(self, prompts: Sequence[str], completion_ids: Any) -> torch.Tensor:
        if completion_ids is None or self.policy_tokenizer is None:
            raise RewardError(f"Reward {self.name!r} has per_token=true, which needs the completions' token ids and "
                              f"the policy tokenizer; the online loop passes both.")
        dec = self.policy_tokenizer.decode
        texts, spans = [], []
        for p, ids in zip(prompts, completion_ids):
            ids = list(ids)
            start = len(texts)
            for t in range(len(ids) + 1):
                c = dec(ids[:t], skip_special_tokens=True)
                texts.append(c if self.input == "completion" else p + c)
            spans.append((start, len(ids)))
        s = self._output(self._logits(texts))
        T = max((n for _, n in spans), default=0)
        out = torch.zeros(len(spans), max(T, 1))
        for i, (start, n) in enumerate(spans):
            if n:
                out[i, :n] = s[start + 1:start + n + 1] - s[start:start + n]
        return out
