"""Batched generation: left-padded prompts in, right-padded responses and their masks out; the sampling settings and
the padding helpers every backend shares.

:func:`generate` runs our own decode loop (:func:`decode`): one prefill forward of the prompts, then one forward per
new token on the model's KV cache, sampling each token by inverse-CDF from ``softmax(logits / temperature)`` (one
uniform draw per row, :func:`sample_categorical`); ended rows leave the batch, and it stops when every row has ended. With ``top_k``/``top_p``
it calls Hugging Face ``generate`` instead (its logits warpers). Sampling is pure by default (``top_k=0``,
``top_p=1.0``), so the sampler is exactly the policy ``softmax(logits / temperature)`` that the loss scores. Each
response is cut at a length drawn per sample from ``[min_new_tokens, max_new_tokens]`` (the TRL IMDb recipe's
``LengthSampler``) or at its first EOS, which stays in the response once; everything after is padding. "EOS" is every
id in ``eos_ids``: the tokenizer's EOS and each EOS id of the model's ``generation_config.json``
(:func:`rlhf_exp.modeling.eos_token_ids`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

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


def sample_categorical(probs: torch.Tensor, u: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One draw per row from the categorical distributions ``probs (B, V)`` (rows sum to 1; zeros allowed), by inverse
    CDF: ``u ~ U[0, 1)`` per row (``u (B,)`` if given, else drawn from the global torch generator), the first index
    whose cumulative probability exceeds ``u * total``. A zero-probability index is never drawn. Returns ``(B,)`` long.

    ``torch.multinomial`` draws an exponential variate for every entry of ``probs`` (B x V random numbers per token);
    this draws B, which on CPU was a third of decoding time at a vocabulary of 1536 and grows with the vocabulary.
    """
    cdf = probs.double().cumsum(dim=-1)
    if u is None:
        u = torch.rand(probs.shape[0], device=probs.device, dtype=torch.float64)
    x = u.to(device=probs.device, dtype=torch.float64).unsqueeze(1) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, x, right=True).squeeze(1)
    return idx.clamp_(max=probs.shape[-1] - 1)


COMPACT_EVERY = 8   # drop ended rows from the batch once they are at least 1/8 of it (each drop copies the KV cache)


def _accepts(lm, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(lm.forward).parameters
    except (TypeError, ValueError):
        return False


def cache_argument(lm) -> Optional[str]:
    """The name under which ``lm.forward`` takes (and its output returns) the KV cache: ``cache`` (transformers >=
    5.24), ``past_key_values`` (earlier), or None for a model that takes neither (it decodes through ``generate``)."""
    for name in ("cache", "past_key_values"):
        if _accepts(lm, name):
            return name
    return None


@torch.no_grad()
def decode(lm, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, settings: SamplingSettings,
           lengths: torch.Tensor, eos_ids: EosIds, pad_id: int, synced: bool = False) -> torch.Tensor:
    """Sample (or, with ``do_sample=False``, greedily decode) new tokens for a left-padded batch.

    Position ids and the attention mask follow Hugging Face ``generate`` (positions count real tokens from 0; padding
    is masked), so with ``do_sample=False`` the tokens equal ``generate``'s. Row ``i`` ends at its first EOS or after
    ``lengths[i]`` tokens; ended rows leave the batch once they are an eighth of it (their KV cache rows are
    dropped), so later forwards run mostly the rows still going; the loop stops when every row has ended. With
    ``synced`` (several processes of a sharded model, FSDP or DeepSpeed, whose forwards may be collectives) every
    process keeps its batch whole and steps until all processes' rows have ended.

    Args:
        lm: a Hugging Face causal LM (unwrapped, in eval mode) whose forward takes a KV cache
            (:func:`cache_argument`).
        prompt_ids, prompt_mask: ``(B, P)``, left-padded.
        lengths: ``(B,)`` per-row length limits.
    Returns:
        ``(B, T')`` new tokens (``T'`` the longest limit, over all processes when ``synced``), ``pad_id`` after a
        row's end (cut with :func:`truncate_responses`).
    """
    device = prompt_ids.device
    B = prompt_ids.shape[0]
    limit = _global_max(int(lengths.max().item()), device) if synced else int(lengths.max().item())
    lengths = lengths.to(device)
    stop = torch.as_tensor(as_id_list(eos_ids), device=device)
    tokens = torch.full((B, limit), pad_id, dtype=torch.long, device=device)
    mask = prompt_mask.long()
    position = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    extra = {"logits_to_keep": 1} if _accepts(lm, "logits_to_keep") else {}
    cache_arg = cache_argument(lm) or "past_key_values"
    out = lm(input_ids=prompt_ids, attention_mask=mask, position_ids=position, use_cache=True, **extra)
    cache = getattr(out, cache_arg)
    shrink = not synced and hasattr(cache, "batch_select_indices")
    position = position[:, -1:]
    rows = torch.arange(B, device=device)           # the rows of the full batch still in the cache
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(limit):
        logits = out.logits[:, -1].float()
        if settings.do_sample:   # one uniform per row of the whole batch: the samples do not depend on compaction
            u = torch.rand(B, device=device, dtype=torch.float64)[rows]
            nxt = sample_categorical(torch.softmax(logits / settings.temperature, dim=-1), u)
        else:
            nxt = logits.argmax(dim=-1)
        nxt = nxt.masked_fill(done, pad_id)
        tokens[rows, t] = nxt
        done = done | torch.isin(nxt, stop) | (lengths[rows] <= t + 1)
        if t + 1 == limit or _all_done(done, synced):
            break
        if shrink and int(done.sum()) * COMPACT_EVERY >= done.numel():
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, mask, position, nxt, done = rows[keep], mask[keep], position[keep], nxt[keep], done[keep]
        mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype, device=device)], dim=1)
        position = position + 1
        out = lm(input_ids=nxt.unsqueeze(1), attention_mask=mask, position_ids=position, use_cache=True,
                 **{cache_arg: cache})
        cache = getattr(out, cache_arg)
    return tokens


def _global_max(n: int, device) -> int:
    import torch.distributed as dist

    t = torch.tensor([n], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _all_done(done: torch.Tensor, synced: bool) -> bool:
    if not synced:
        return bool(done.all())
    import torch.distributed as dist

    flag = torch.tensor([0.0 if bool(done.all()) else 1.0], device=done.device)
    dist.all_reduce(flag)
    return flag.item() == 0.0


@torch.no_grad()
def generate(lm, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, settings: SamplingSettings,
             lengths: torch.Tensor, eos_ids: EosIds, pad_id: int, synced: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample responses for a left-padded batch: :func:`decode`, or Hugging Face ``generate`` when ``top_k``/``top_p``
    truncate the distribution.

    Args:
        lm: a Hugging Face causal LM (unwrapped, in eval mode).
        prompt_ids, prompt_mask: ``(B, P)``.
        lengths: ``(B,)`` per-sample length limits (see :func:`sample_lengths`).
        eos_ids: the ids that end a response (:func:`rlhf_exp.modeling.eos_token_ids`).
        synced: more than one process, each forward a collective (see :func:`decode`).
    Returns:
        ``response_ids (B, T)``, ``response_mask (B, T)``.
    """
    if settings.truncates or cache_argument(lm) is None:
        gen_cfg = generation_config(settings, int(lengths.max().item()), eos_ids, pad_id)
        out = lm.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=gen_cfg,
                          synced_gpus=synced or None)
        new_tokens = out[:, prompt_ids.shape[1]:]
    else:
        new_tokens = decode(lm, prompt_ids, prompt_mask, settings, lengths, eos_ids, pad_id, synced=synced)
    return truncate_responses(new_tokens, lengths, eos_ids, pad_id)
