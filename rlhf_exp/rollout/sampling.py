"""Batched generation with Hugging Face ``generate``: left-padded prompts in, right-padded responses and their masks
out; the sampling settings and the padding helpers every backend shares.

One ``generate`` call per batch. Sampling is pure by default (``top_k=0``, ``top_p=1.0``), so the sampler is exactly
the policy ``softmax(logits / temperature)`` that the loss scores. Each response is cut at a length drawn per sample
from ``[min_new_tokens, max_new_tokens]`` (the TRL IMDb recipe's ``LengthSampler``) or at its first EOS, which stays
in the response once; everything after is padding. "EOS" is every id in ``eos_ids``: the tokenizer's EOS and each
EOS id of the model's ``generation_config.json`` (:func:`rlhf_exp.modeling.eos_token_ids`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch


@dataclass
class SamplingSettings:
    """How to sample; ``do_sample=False`` is greedy decoding."""

    max_new_tokens: int = 16
    min_new_tokens: int = 4
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    do_sample: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"generation: need 1 <= min_new_tokens <= max_new_tokens, got {self.min_new_tokens} "
                             f"and {self.max_new_tokens}.")
        if self.temperature <= 0:
            raise ValueError(f"generation.temperature must be > 0, got {self.temperature} (training rollouts always "
                             f"sample; for greedy evaluation set eval.do_sample=false).")

    @property
    def truncates(self) -> bool:
        """True when top-k/top-p make the sampler differ from the policy that is scored (off-policy samples)."""
        return self.do_sample and (self.top_k not in (0, None) or self.top_p < 1.0)


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str, left: bool
         ) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            cols = slice(L - len(s), L) if left else slice(0, len(s))
            ids[i, cols] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, cols] = 1
    return ids.to(device), mask.to(device)


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists. Returns ``ids (B, P)`` and ``mask (B, P)`` (long)."""
    return _pad(seqs, pad_id, device, left=True)


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists. Returns ``ids (B, L)`` and ``mask (B, L)`` (long), L the longest sequence."""
    return _pad(seqs, pad_id, device, left=False)


def sample_lengths(n: int, settings: SamplingSettings, generator: torch.Generator) -> torch.Tensor:
    """Per-sample response length limits, uniform in ``[min_new_tokens, max_new_tokens]``. ``(n,)`` long."""
    return torch.randint(settings.min_new_tokens, settings.max_new_tokens + 1, (n,), generator=generator)


EosIds = Union[int, Sequence[int]]


def as_id_list(eos_ids: EosIds) -> list[int]:
    return [int(eos_ids)] if isinstance(eos_ids, int) else [int(i) for i in eos_ids]


def truncate_responses(tokens: torch.Tensor, lengths: torch.Tensor, eos_ids: EosIds, pad_id: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each row at its length limit or just after its first EOS (any id of ``eos_ids``), whichever comes first.

    Args:
        tokens: ``(B, T')`` newly generated tokens.
        lengths: ``(B,)`` length limits.
        eos_ids: one id or several.
    Returns:
        ``response_ids (B, T)`` padded with ``pad_id`` and ``response_mask (B, T)`` (long), with ``T`` the longest
        kept response.
    """
    B, Tp = tokens.shape
    pos = torch.arange(Tp, device=tokens.device).unsqueeze(0)
    is_eos = torch.isin(tokens, torch.as_tensor(as_id_list(eos_ids), device=tokens.device))
    first_eos = torch.where(is_eos.any(dim=1), is_eos.long().argmax(dim=1), torch.full_like(lengths, Tp).to(tokens.device))
    keep = (pos <= first_eos.unsqueeze(1)) & (pos < lengths.to(tokens.device).unsqueeze(1))
    T = max(int(keep.sum(dim=1).max().item()), 1)
    ids = torch.where(keep, tokens, torch.full_like(tokens, pad_id))[:, :T]
    return ids.contiguous(), keep[:, :T].long().contiguous()


def generation_config(settings: SamplingSettings, max_new_tokens: int, eos_ids: EosIds, pad_id: int):
    """A complete ``GenerationConfig``: nothing is inherited from the model's defaults (GPT-2's top_k=50, say);
    generation stops at any id of ``eos_ids``."""
    from transformers import GenerationConfig

    ids = as_id_list(eos_ids)
    kwargs = dict(max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=ids[0] if len(ids) == 1 else ids, pad_token_id=pad_id,
                  do_sample=settings.do_sample, num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0)
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_k=settings.top_k or 0, top_p=settings.top_p)
    return GenerationConfig(**kwargs)


@torch.no_grad()
def generate(lm, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, settings: SamplingSettings,
             lengths: torch.Tensor, eos_ids: EosIds, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample responses for a left-padded batch with one ``generate`` call.

    Args:
        lm: a Hugging Face causal LM (unwrapped, in eval mode).
        prompt_ids, prompt_mask: ``(B, P)``.
        lengths: ``(B,)`` per-sample length limits (see :func:`sample_lengths`).
        eos_ids: the ids that end a response (:func:`rlhf_exp.modeling.eos_token_ids`).
    Returns:
        ``response_ids (B, T)``, ``response_mask (B, T)``.
    """
    gen_cfg = generation_config(settings, int(lengths.max().item()), eos_ids, pad_id)
    out = lm.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=gen_cfg)
    new_tokens = out[:, prompt_ids.shape[1]:]
    return truncate_responses(new_tokens, lengths, eos_ids, pad_id)
