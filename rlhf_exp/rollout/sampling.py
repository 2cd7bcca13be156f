"""Batched generation: left-padded prompts in, right-padded responses and their masks out; the sampling settings and
the padding helpers every backend shares.

:func:`generate` runs our own decode loop (:func:`decode`): one prefill forward of the prompts, then one forward per
new token on a KV cache (preallocated and written in place where the model allows: :func:`static_cache_supported`;
compiled with :class:`Decoder` ``compile=True``), sampling each token by inverse-CDF from
``softmax(logits / temperature)`` (one uniform draw per row, :func:`sample_categorical`); ended rows leave the batch,
and it stops when every row has ended. With ``top_k``/``top_p`` it calls Hugging Face ``generate`` instead (its logits warpers). Sampling is pure by default (``top_k=0``,
``top_p=1.0``), so the sampler is exactly the policy ``softmax(logits / temperature)`` that the loss scores. Each
response is cut at a length drawn per sample from ``[min_new_tokens, max_new_tokens]`` (the TRL IMDb recipe's
``LengthSampler``) or at its first EOS, which stays in the response once; everything after is padding. "EOS" is every
id in ``eos_ids``: the tokenizer's EOS and each EOS id of the model's ``generation_config.json``
(:func:`rlhf_exp.modeling.eos_token_ids`).
"""
from __future__ import annotations

import time
import weakref
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


def static_cache_supported(lm) -> bool:
    """Whether :func:`decode` can run ``lm`` on a preallocated KV cache written in place (the static path).

    Needs transformers' ``StaticCache`` in the form where each layer tracks its own write position (the model's
    forward takes no ``cache_position``: transformers 5.23, 5.24 and 5.25 tested), a model that declares it can be compiled whole
    (``_can_compile_fullgraph``: GPT-2, Llama, Qwen2 ...), full attention in every layer (no sliding window, no
    linear attention) and the ``sdpa`` or ``eager`` attention implementation (the 4-D mask the loop writes in place
    is in their format). Anything else decodes on the model's own (growing) cache."""
    try:
        return _STATIC_SUPPORT[lm]
    except (KeyError, TypeError):
        pass
    ok = _static_cache_supported(lm)
    try:
        _STATIC_SUPPORT[lm] = ok
    except TypeError:
        pass
    return ok


_STATIC_SUPPORT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # model -> static_cache_supported


def _static_cache_supported(lm) -> bool:
    try:
        from transformers.cache_utils import StaticCache, StaticLayer
    except ImportError:
        return False
    cfg = getattr(lm, "config", None)
    if (cfg is None or cache_argument(lm) is None or _accepts(lm, "cache_position")
            or not getattr(lm, "_can_compile_fullgraph", False) or getattr(cfg, "is_encoder_decoder", False)
            or getattr(cfg, "_attn_implementation", None) not in ("sdpa", "eager")):
        return False
    try:
        layers = StaticCache(config=cfg, max_cache_len=1).layers
    except Exception:   # a config StaticCache cannot read: the dynamic path
        return False
    return len(layers) > 0 and all(type(layer) is StaticLayer for layer in layers)


def _prefix_layer_class():
    """:class:`~transformers.cache_utils.StaticLayer` whose attention reads only the filled prefix (defined lazily:
    transformers is imported on first use)."""
    global _PrefixLayer
    if _PrefixLayer is not None:
        return _PrefixLayer
    from transformers.cache_utils import StaticLayer

    class PrefixLayer(StaticLayer):
        """One layer's keys and values, preallocated ``(B, H, L, D)`` and written in place at the next free
        positions; attention reads the filled prefix ``[:filled]`` (a view, no copy), so a step costs what the
        tokens so far cost, not the whole buffer. Rows leave with :meth:`batch_select_indices` (a copy of the rows
        kept)."""

        def __init__(self, max_cache_len: int):
            super().__init__(max_cache_len=max_cache_len)
            self.filled = 0

        def lazy_initialization(self, key_states, value_states) -> None:
            # uninitialised memory: only the filled prefix is ever read
            self.device = key_states.device
            shape = (key_states.shape[0], key_states.shape[1], self.max_cache_len)
            self.keys = key_states.new_empty((*shape, key_states.shape[-1]))
            self.values = value_states.new_empty((*shape, value_states.shape[-1]))
            self.is_initialized = True

        def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
            return self.filled + query_length, 0

        def get_seq_length(self) -> int:
            return self.filled

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.filled + key_states.shape[-2]
            self.keys[:, :, self.filled:end] = key_states
            self.values[:, :, self.filled:end] = value_states
            self.filled = end
            return self.keys[:, :, :end], self.values[:, :, :end]

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self.keys = self.keys.index_select(0, indices)
            self.values = self.values.index_select(0, indices)

        def reset(self) -> None:
            super().reset()
            self.filled = 0

    _PrefixLayer = PrefixLayer
    return PrefixLayer


_PrefixLayer = None


def _compile_count() -> int:
    """Graphs torch.compile has compiled so far in this process (to tell the calls that compiled)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class Decoder:
    """What :func:`decode` keeps between calls: the compiled one-token step per model (``compile=True``,
    ``generation.compile``), the seconds spent compiling (``compile_s``, counted apart from decoding), the
    preallocated cache of the CUDA-graph path (its addresses must not change between calls) and which path the last
    call took (``last_path``: ``static``, ``static-compiled``, ``dynamic``; tests assert it).

    The compiled step is ``torch.compile`` of the model's one-token forward over the static cache. On CUDA it runs
    with ``mode="reduce-overhead"`` (CUDA graphs) over the whole preallocated cache (fixed shapes: attention over
    every position, the unfilled ones masked); elsewhere (CPU) with ``dynamic=True`` over the filled prefix, one
    graph for every step and batch size. Compiled, ended rows stay in the batch (a new batch size, and a batch of
    one row, would compile another graph). The first calls compile (tens of seconds on CPU), later ones reuse the
    graph."""

    def __init__(self, compile: bool = False):
        self.compile = bool(compile)
        self.whole_buffer = False   # True: the CUDA-graph path's cache layout without compiling (tests run it on CPU)
        self.compile_s = 0.0
        self.last_path: Optional[str] = None
        self._steps: dict = {}
        self._graph_cache: Optional[tuple] = None

    def step_fn(self, lm, cache_arg: str, cuda_graphs: bool):
        """The compiled ``(input_ids (B,1), attention_mask (B,1,1,K), position_ids (B,1), cache) -> logits (B, V)``
        of ``lm`` (compiled once per model)."""
        key = id(lm)
        if key not in self._steps or self._steps[key][0] is not lm:
            def step(input_ids, attention_mask, position_ids, cache):
                out = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{cache_arg: cache})
                return out.logits[:, -1]

            if not cuda_graphs:
                # no "duck" sizing: sizes that happen to be equal in the first trace (a batch of 8 and a mask width
                # of 8) would be assumed equal for good, and every later call where they differ would recompile
                from torch.fx.experimental import _config as fx_config

                fx_config.use_duck_shape = False
            compiled = (torch.compile(step, mode="reduce-overhead", dynamic=False) if cuda_graphs
                        else torch.compile(step, dynamic=True))
            self._steps[key] = (lm, compiled)
        return self._steps[key][1]

    def cache_for(self, lm, batch: int, length: int, full: bool):
        """A static cache of ``length`` positions: the whole-buffer ``StaticCache`` of the CUDA-graph path (reused
        while batch and length stay the same, so its addresses do not change), else one whose layers read their
        filled prefix."""
        from transformers.cache_utils import StaticCache

        if full:
            key = (id(lm), batch, length)
            if self._graph_cache is None or self._graph_cache[0] != key:
                self._graph_cache = (key, StaticCache(config=lm.config, max_cache_len=length))
            cache = self._graph_cache[1]
            cache.reset()
            return cache
        cache = StaticCache(config=lm.config, max_cache_len=length)
        layer = _prefix_layer_class()
        cache.layers = [layer(max_cache_len=length) for _ in cache.layers]
        return cache

    def run_step(self, fn, *args):
        """Call the compiled step; the wall time of a call that compiled a graph goes to ``compile_s``."""
        before = _compile_count()
        t0 = time.perf_counter()
        out = fn(*args)
        if _compile_count() != before:
            self.compile_s += time.perf_counter() - t0
        return out


def _bucket(n: int, size: int = 64) -> int:
    """``n`` rounded up to a multiple of ``size`` (cache lengths of the CUDA-graph path: fewer distinct shapes)."""
    return -(-n // size) * size


@torch.no_grad()
def decode(lm, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, settings: SamplingSettings,
           lengths: torch.Tensor, eos_ids: EosIds, pad_id: int, synced: bool = False,
           decoder: Optional[Decoder] = None) -> torch.Tensor:
    """Sample (or, with ``do_sample=False``, greedily decode) new tokens for a left-padded batch.

    Position ids and the attention mask follow Hugging Face ``generate`` (positions count real tokens from 0; padding
    is masked), so with ``do_sample=False`` the tokens equal ``generate``'s. Row ``i`` ends at its first EOS or after
    ``lengths[i]`` tokens; ended rows leave the batch once they are an eighth of it (their KV cache rows are
    dropped), so later forwards run mostly the rows still going; the loop stops when every row has ended. With
    ``synced`` (several processes of a sharded model, FSDP or DeepSpeed, whose forwards may be collectives) every
    process keeps its batch whole and steps until all processes' rows have ended.

    Where the model supports it (:func:`static_cache_supported`) the KV cache is preallocated for the prompt and the
    longest limit and written in place, and the attention mask is a ``(B, 1, 1, P + limit)`` tensor written once per
    step in place (one column), so a step concatenates nothing and builds no mask; each step attends to the filled
    prefix of both. Otherwise the model's own cache grows by concatenation (the dynamic path). With
    ``decoder.compile`` the one-token step is ``torch.compile``-d (:class:`Decoder`).

    Args:
        lm: a Hugging Face causal LM (unwrapped, in eval mode) whose forward takes a KV cache
            (:func:`cache_argument`).
        prompt_ids, prompt_mask: ``(B, P)``, left-padded.
        lengths: ``(B,)`` per-row length limits.
        decoder: the state kept between calls (compiled step, compile seconds); None = a fresh eager one.
    Returns:
        ``(B, T')`` new tokens (``T'`` the longest limit, over all processes when ``synced``), ``pad_id`` after a
        row's end (cut with :func:`truncate_responses`).
    """
    decoder = decoder if decoder is not None else Decoder()
    device = prompt_ids.device
    B, P = prompt_ids.shape
    limit = _global_max(int(lengths.max().item()), device) if synced else int(lengths.max().item())
    lengths = lengths.to(device)
    stop = torch.as_tensor(as_id_list(eos_ids), device=device)
    tokens = torch.full((B, limit), pad_id, dtype=torch.long, device=device)
    mask = prompt_mask.long()
    position = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    extra = {"logits_to_keep": 1} if _accepts(lm, "logits_to_keep") else {}
    cache_arg = cache_argument(lm) or "past_key_values"
    static = static_cache_supported(lm)
    compiled = decoder.compile and static
    cuda_graphs = compiled and device.type == "cuda"
    # fixed shapes for CUDA graphs: attention over the whole (length-bucketed) buffer, the unfilled part masked
    whole = static and (cuda_graphs or decoder.whole_buffer)
    decoder.last_path = ("static-compiled" if compiled else "static") if static else "dynamic"
    if static:
        width = _bucket(P + limit) if whole else P + limit
        cache = decoder.cache_for(lm, B, width, full=whole)
        extra[cache_arg] = cache
        # the mask every step reads: prompt columns as the prompt mask, a generated position's column set when its
        # token enters; sdpa takes booleans (True = attend), eager adds it to the scores
        if lm.config._attn_implementation == "sdpa":
            attn, seen = torch.zeros((B, 1, 1, width), dtype=torch.bool, device=device), True
            attn[:, 0, 0, :P] = mask.bool()
        else:
            dtype = next(lm.parameters()).dtype
            attn = torch.full((B, 1, 1, width), torch.finfo(dtype).min, dtype=dtype, device=device)
            attn[:, 0, 0, :P].masked_fill_(mask.bool(), 0.0)
            seen = 0.0
        step = decoder.step_fn(lm, cache_arg, cuda_graphs) if compiled else None
    else:
        # the dynamic path's 2-D mask: preallocated, each step passes its first P + t + 1 columns
        attn = torch.ones((B, P + limit), dtype=mask.dtype, device=device)
        attn[:, :P] = mask
    out = lm(input_ids=prompt_ids, attention_mask=mask, position_ids=position, use_cache=True, **extra)
    logits = out.logits[:, -1]
    cache = getattr(out, cache_arg)
    # compiled: the batch stays whole (a batch size of 1 or each new size would compile another graph)
    shrink = not synced and not compiled and not whole and hasattr(cache, "batch_select_indices")
    position = position[:, -1:].clone(memory_format=torch.contiguous_format)   # strides (1, 1): one compiled graph
    rows = torch.arange(B, device=device)           # the rows of the full batch still in the cache
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(limit):
        logits = logits.float()
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
            rows, attn, position, nxt, done = rows[keep], attn[keep], position[keep], nxt[keep], done[keep]
        position += 1
        ids = nxt.unsqueeze(1)
        if static:
            attn[:, 0, 0, P + t] = seen
            step_mask = attn if whole else attn[..., :P + t + 1]
            if compiled:
                if cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                logits = decoder.run_step(step, ids, step_mask, position, cache)
            else:
                logits = lm(input_ids=ids, attention_mask=step_mask, position_ids=position, use_cache=True,
                            **{cache_arg: cache}).logits[:, -1]
        else:
            out = lm(input_ids=ids, attention_mask=attn[:, :P + t + 1], position_ids=position, use_cache=True,
                     **{cache_arg: cache})
            logits, cache = out.logits[:, -1], getattr(out, cache_arg)
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
             lengths: torch.Tensor, eos_ids: EosIds, pad_id: int, synced: bool = False,
             decoder: Optional[Decoder] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample responses for a left-padded batch: :func:`decode`, or Hugging Face ``generate`` when ``top_k``/``top_p``
    truncate the distribution.

    Args:
        lm: a Hugging Face causal LM (unwrapped, in eval mode).
        prompt_ids, prompt_mask: ``(B, P)``.
        lengths: ``(B,)`` per-sample length limits (see :func:`sample_lengths`).
        eos_ids: the ids that end a response (:func:`rlhf_exp.modeling.eos_token_ids`).
        synced: more than one process, each forward a collective (see :func:`decode`).
        decoder: :class:`Decoder` state kept between calls (the compiled step of ``generation.compile``).
    Returns:
        ``response_ids (B, T)``, ``response_mask (B, T)``.
    """
    if settings.truncates or cache_argument(lm) is None:
        if decoder is not None:
            decoder.last_path = "generate"
        gen_cfg = generation_config(settings, int(lengths.max().item()), eos_ids, pad_id)
        out = lm.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=gen_cfg,
                          synced_gpus=synced or None)
        new_tokens = out[:, prompt_ids.shape[1]:]
    else:
        new_tokens = decode(lm, prompt_ids, prompt_mask, settings, lengths, eos_ids, pad_id, synced=synced,
                            decoder=decoder)
    return truncate_responses(new_tokens, lengths, eos_ids, pad_id)
