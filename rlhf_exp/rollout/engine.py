"""The rollout engine: what samples responses for the loops (``generation.backend``).

An engine turns a left-padded prompt batch into right-padded responses, under the loop's
:class:`~rlhf_exp.rollout.sampling.SamplingSettings` and per-sample length limits:

* ``generate(prompt_ids, prompt_mask, sampling, lengths) -> Generation`` (responses, their mask, and the sampler's own
  log-probs when the backend is a separate copy of the policy);
* ``sync_weights(policy)``: called by the loops after every optimizer phase (and once before the first rollout), so
  that the next ``generate`` samples from the trained policy;
* ``sleep()`` / ``wake()``: free and restore the engine's memory around the updates (no-ops where unsupported).

Every engine keeps the trainer's response contract (:mod:`rlhf_exp.rollout.sampling`): each response is cut at its
length limit or just after its first stop id (the tokenizer's EOS and the model's ``generation_config.json`` EOS ids),
which stays in the response once; everything after is ``pad_id`` with mask 0.

Backends: ``hf`` (:class:`HFGenerator`, the trained model itself: our KV-cache decode loop) and ``vllm``
(:class:`~rlhf_exp.rollout.vllm_engine.VLLMGenerator`, a colocated in-process vLLM engine), chosen by
:func:`rlhf_exp.rollout.backends.build_engine`. docs/rollout.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from rlhf_exp.rollout.sampling import Decoder, SamplingSettings, generate

@dataclass
class Generation:
    """One generated batch.

    ``response_ids (B, T)`` long, right-padded with ``pad_id``; ``response_mask (B, T)`` long (1 on real tokens);
    ``logprobs (B, T)`` float: the sampler's own log-probs of the response tokens (temperature applied), 0 at padding,
    or None when the sampler is the trained model itself (``hf``: they are the scorer's ``old_logprobs``).
    """

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: Optional[torch.Tensor] = None


class RolloutEngine:
    """The interface the loops use; see the module docstring."""

    name = "base"
    compile_s = 0.0   # seconds spent compiling the sampler so far (generation.compile), counted in the gen time

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampling: SamplingSettings,
                 lengths: torch.Tensor) -> Generation:
        """Sample one response per row. ``prompt_ids``, ``prompt_mask``: ``(B, P)`` left-padded; ``lengths``:
        ``(B,)`` per-sample length limits (:func:`~rlhf_exp.rollout.sampling.sample_lengths`)."""
        raise NotImplementedError

    def sync_weights(self, policy) -> None:
        """Make the next ``generate`` sample from ``policy`` (a prepared :class:`~rlhf_exp.modeling.PolicyModel`)."""

    def sleep(self) -> None:
        """Free the engine's memory while the policy is updated (no-op where unsupported)."""

    def wake(self) -> None:
        """Undo :meth:`sleep` before the next ``generate`` (no-op where unsupported)."""


class HFGenerator(RolloutEngine):
    """The trained policy itself decodes (:func:`~rlhf_exp.rollout.sampling.generate`: our KV-cache decode loop, or
    Hugging Face ``generate`` under top-k/top-p): one call per batch, under accelerate's autocast (the
    precision the policy is scored in), with the full parameters of a sharded model gathered
    (:func:`~rlhf_exp.distributed.model_for_generation`). It samples from the live policy, so ``sync_weights`` has
    nothing to copy, and returns no log-probs of its own (the scorer's are the sampler's). With ``compile``
    (``generation.compile``) the decode loop's one-token step is compiled (:class:`~rlhf_exp.rollout.sampling.Decoder`;
    the seconds spent compiling are ``compile_s``).

    Needs: ``accelerator``, the prepared ``policy``, ``stop_ids`` (:func:`~rlhf_exp.modeling.eos_token_ids`) and the
    tokenizer's ``pad_id``.
    """

    name = "hf"

    def __init__(self, accelerator, policy, stop_ids: Sequence[int], pad_id: int, compile: bool = False):
        self.acc, self.policy, self.stop_ids, self.pad_id = accelerator, policy, list(stop_ids), pad_id
        self.decoder = Decoder(compile=compile)

    @property
    def compile_s(self) -> float:
        return self.decoder.compile_s

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampling: SamplingSettings,
                 lengths: torch.Tensor) -> Generation:
        from rlhf_exp.distributed import model_for_generation

        # under mixed precision the sampler runs in the precision the policy is scored in (accelerate's autocast)
        with model_for_generation(self.acc, self.policy) as unwrapped, self.acc.autocast():
            ids, mask = generate(unwrapped.lm, prompt_ids, prompt_mask, sampling, lengths, self.stop_ids, self.pad_id,
                                 synced=self._synced(), decoder=self.decoder)
        return Generation(ids, mask)

    def sync_weights(self, policy) -> None:
        self.policy = policy

    def _synced(self) -> bool:
        """Several processes with a sharded model: decode until every process's rows have ended (a forward of a
        model sharded per forward is a collective)."""
        from accelerate.utils import DistributedType

        return self.acc.num_processes > 1 and self.acc.distributed_type in (DistributedType.FSDP,
                                                                            DistributedType.DEEPSPEED)
