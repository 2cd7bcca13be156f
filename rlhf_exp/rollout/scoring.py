"""No-grad scoring of rollout batches: the one place where the policy's log-probs (with the entropy and the value
head's values on request), the reference's log-probs and the exact KL over the vocabulary are computed.

A batch here is a ``dict`` with ``prompt_ids (B, P)``, ``prompt_mask (B, P)`` (left-padded), ``response_ids (B, T)``
and ``response_mask (B, T)`` (right-padded); every output is ``(B, T)`` aligned with ``response_ids``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import torch

from rlhf_exp.core.kl import full_kl_from_logits
from rlhf_exp.modeling import score_responses

SEQ_KEYS = ("prompt_ids", "prompt_mask", "response_ids", "response_mask")


class Scorer:
    """Scores rollout batches in chunks of ``forward_bs`` sequences (``train.forward_batch_size``).

    Needs: ``policy`` (the prepared :class:`~rlhf_exp.modeling.PolicyModel` the optimizer trains; it is scored as it
    is now), ``ref`` (the frozen reference, or None where nothing needs it), ``forward_bs`` and ``needs_value`` (the
    objective trains a value head: :meth:`score` returns ``old_values``).
    """

    def __init__(self, policy, ref, forward_bs: int, needs_value: bool = False):
        self.policy, self.ref, self.forward_bs, self.needs_value = policy, ref, int(forward_bs), bool(needs_value)

    @torch.no_grad()
    def forward_chunks(self, model, batch: Mapping[str, torch.Tensor], temperature: float, *, entropy=False,
                       values=False, logits=False) -> dict[str, torch.Tensor]:
        """No-grad forward of ``model`` over the batch in chunks; returns the concatenated ``logprobs`` (and
        ``entropy``, ``values``, ``logits (B, T, V)`` on request)."""
        parts = defaultdict(list)
        B = batch["prompt_ids"].shape[0]
        for s in range(0, B, self.forward_bs):
            sl = slice(s, s + self.forward_bs)
            out = score_responses(model, batch["prompt_ids"][sl], batch["prompt_mask"][sl], batch["response_ids"][sl],
                                  batch["response_mask"][sl], temperature, return_entropy=entropy,
                                  return_values=values, return_logits=logits)
            parts["logprobs"].append(out.logprobs)
            if entropy:
                parts["entropy"].append(out.entropy)
            if values:
                parts["values"].append(out.values.float())
            if logits:
                parts["logits"].append(out.logits)
        return {k: torch.cat(v) for k, v in parts.items()}

    def full_kl(self, batch: Mapping[str, torch.Tensor], temperature: float) -> torch.Tensor:
        """Exact per-token KL(policy || reference) over the vocabulary, chunked. ``(B, T)``."""
        out = []
        B = batch["prompt_ids"].shape[0]
        for s in range(0, B, self.forward_bs):
            sub = {k: batch[k][s:s + self.forward_bs] for k in SEQ_KEYS}
            lp = self.forward_chunks(self.policy, sub, temperature, logits=True)["logits"]
            lq = self.forward_chunks(self.ref, sub, temperature, logits=True)["logits"]
            out.append(full_kl_from_logits(lp, lq))
        return torch.cat(out)

    def score(self, batch: Mapping[str, torch.Tensor], temperature: float, *, entropy: bool = True,
              with_ref: bool = True, with_policy: bool = True) -> dict[str, torch.Tensor]:
        """The scores a rollout batch carries into the update: ``old_logprobs`` (the policy's), ``entropy`` (when
        ``entropy``), ``old_values`` (when ``needs_value``) and ``ref_logprobs`` (when ``with_ref``); each ``(B, T)``.
        ``with_policy=False`` skips the policy's forward (only ``ref_logprobs``): when the update's own forward gives
        the old log-probs (:func:`rlhf_exp.train.batching.old_logprobs_from_update`).
        """
        out = {}
        if with_policy:
            pol = self.forward_chunks(self.policy, batch, temperature, entropy=entropy, values=self.needs_value)
            out["old_logprobs"] = pol["logprobs"]
            if entropy:
                out["entropy"] = pol["entropy"]
            if "values" in pol:
                out["old_values"] = pol["values"]
        if with_ref:
            out["ref_logprobs"] = self.forward_chunks(self.ref, batch, temperature)["logprobs"]
        return out
