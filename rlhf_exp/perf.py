"""Analytic FLOP counts of a decoder-only language model: the one place the training loop (``budget/flops``) and the
decode loop take them from.

Forward pass, one token at position ``t`` (it attends to ``t`` positions, itself included):

    C_forward(t) = 2 N  +  4 n_layer t d_attn  +  2 d_model n_vocab

- ``2 N``: each non-embedding weight takes part in one multiply-add (2 FLOPs) per token. ``N`` counts the
  non-embedding parameters as Kaplan et al. (2020, "Scaling Laws for Neural Language Models", Sec. 2.1 and
  Table 1) do: attention and MLP weights, biases and norms, not the token or position embeddings nor the LM head.
- ``4 n_layer t d_attn``: per layer, the attention scores ``Q K^T`` (``2 t d_attn``) and the weighted sum of the
  values (``2 t d_attn``), with ``d_attn = n_heads * head_dim`` over the query heads (grouped-query attention
  shares keys and values, not these products). Hoffmann et al. (2022, "Training Compute-Optimal Large Language
  Models", Appendix F) count both products; Kaplan's Table 1 lists ``2 n_layer n_ctx d_attn``, the scores alone.
- ``2 d_model n_vocab``: the logits (the LM head, tied to the embeddings or not; Chinchilla's "final logits",
  Kaplan's "de-embed"), for each position whose logits are computed.

Softmax, norms, activations and residual additions (a few FLOPs per activation) are left out, as in both papers.
Causal attention counts the useful work: the ``L`` tokens of a sequence after ``P`` cached ones attend to
``L P + L (L + 1) / 2`` positions in all. (A kernel that computes the whole ``L x L`` score matrix and masks half
of it does up to twice that attention work; ``torch.utils.flop_counter`` counts the whole matrix.)

Training: the backward pass costs about twice the forward (gradients with respect to the activations and to the
weights), so a trained token costs ``3 C_forward`` (Kaplan: ``C ~ 6 N`` per token). With LoRA the frozen weights
need no weight gradients; the count stays ``3 C_forward`` (an upper bound).

Every function takes token counts as numbers, or as tensors/arrays of per-sequence counts (elementwise; sum the
result for a batch).

The phases of an online step (:func:`step_metrics`, the ``perf/`` metrics; docs/performance.md) count the work each
needs, not what an implementation spends on padding or on rows that already ended: generation =
:func:`generation_flops` per row (``p`` real prompt tokens, ``n`` generated); scoring = one forward over prompt +
response per no-grad pass (policy and/or reference), logits at the ``n`` response tokens; update = ``epochs`` x
:func:`training_flops` of the same rows.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any, Optional

BACKWARD_FACTOR = 2.0   # backward FLOPs / forward FLOPs (Kaplan et al. 2020, Sec. 2.1)
POSITION_EMBEDDING_NAMES = ("wpe", "position_embedding", "embed_positions")


@dataclass(frozen=True)
class DecoderShape:
    """What the FLOP count needs of a decoder: ``n_params`` (non-embedding parameters N), ``n_layers``, ``d_model``,
    ``d_attn`` (query heads x head dimension) and ``vocab_size``."""

    n_params: int
    n_layers: int
    d_model: int
    d_attn: int
    vocab_size: int

    @classmethod
    def from_model(cls, model: Any) -> "DecoderShape":
        """The shape of a Hugging Face causal LM (``model.config``, its parameters less the input embeddings, the
        position embeddings and the output embeddings)."""
        cfg = model.config
        if hasattr(cfg, "get_text_config"):
            cfg = cfg.get_text_config()
        heads = int(cfg.num_attention_heads)
        d_model = int(cfg.hidden_size)
        head_dim = int(getattr(cfg, "head_dim", None) or d_model // heads)
        excluded = {id(p) for p in model.get_input_embeddings().parameters()}
        out = model.get_output_embeddings()
        if out is not None:
            excluded |= {id(p) for p in out.parameters()}
        n = sum(p.numel() for name, p in model.named_parameters()
                if id(p) not in excluded and not any(s in name for s in POSITION_EMBEDDING_NAMES))
        return cls(n_params=int(n), n_layers=int(cfg.num_hidden_layers), d_model=d_model, d_attn=heads * head_dim,
                   vocab_size=int(cfg.vocab_size))


def attended_positions(new_tokens: Any, past_tokens: Any = 0) -> Any:
    """Positions attended to in all by ``new_tokens`` tokens after ``past_tokens`` cached ones, causally:
    ``L P + L (L + 1) / 2``."""
    return new_tokens * past_tokens + new_tokens * (new_tokens + 1) / 2


def forward_flops(shape: DecoderShape, new_tokens: Any, past_tokens: Any = 0,
                  logit_tokens: Optional[Any] = None) -> Any:
    """FLOPs of one forward pass over ``new_tokens`` tokens of a sequence that already has ``past_tokens`` in the
    KV cache, with logits at ``logit_tokens`` positions (default: every new token):
    ``2 N L + 4 n_layer d_attn (L P + L (L + 1) / 2) + 2 d_model n_vocab K``."""
    logit_tokens = new_tokens if logit_tokens is None else logit_tokens
    return (2.0 * shape.n_params * new_tokens
            + 4.0 * shape.n_layers * shape.d_attn * attended_positions(new_tokens, past_tokens)
            + 2.0 * shape.d_model * shape.vocab_size * logit_tokens)


def training_flops(shape: DecoderShape, tokens: Any, logit_tokens: Optional[Any] = None) -> Any:
    """FLOPs of a forward and backward pass over sequences of ``tokens`` tokens: ``(1 + 2) x forward``."""
    return (1.0 + BACKWARD_FACTOR) * forward_flops(shape, tokens, 0, logit_tokens)


def generation_flops(shape: DecoderShape, prompt_tokens: Any, new_tokens: Any) -> Any:
    """FLOPs of generating ``new_tokens`` (>= 1) tokens after a prompt of ``prompt_tokens`` with a KV cache: the
    prefill (the prompt, logits at its last position only) and ``new_tokens - 1`` decoding steps (each feeds the
    last generated token, logits at it). Equals a forward over ``prompt_tokens + new_tokens - 1`` tokens with
    logits at ``new_tokens`` positions."""
    prefill = forward_flops(shape, prompt_tokens, 0, logit_tokens=1)
    decode = forward_flops(shape, new_tokens - 1, prompt_tokens)
    return prefill + decode


# ---------------------------------------------------------------------------------------------------------------
# The phases of an online step: perf/ metrics, and the benchmark's reference products
# ---------------------------------------------------------------------------------------------------------------
def _lengths(prompt_mask, response_mask):
    """Real prompt and response tokens per row (float64, CPU) of ``(B, P)`` and ``(B, T)`` masks."""
    return prompt_mask.sum(dim=1).double().cpu(), response_mask.sum(dim=1).double().cpu()


def batch_generation_flops(shape: DecoderShape, prompt_lens, response_lens) -> float:
    """:func:`generation_flops` summed over rows; a row that generated nothing costs nothing."""
    n = response_lens
    live = n > 0
    if not bool(live.any()):
        return 0.0
    return float(generation_flops(shape, prompt_lens[live], n[live]).sum())


def batch_scoring_flops(shape: DecoderShape, prompt_lens, response_lens) -> float:
    """One forward over each row's prompt + response with the response tokens' logits, summed over rows."""
    return float(forward_flops(shape, prompt_lens + response_lens, 0, logit_tokens=response_lens).sum())


def batch_update_flops(shape: DecoderShape, prompt_lens, response_lens, epochs: int) -> float:
    """``epochs`` forward + backward passes over the rows (:func:`training_flops`), summed."""
    return float(epochs * training_flops(shape, prompt_lens + response_lens, logit_tokens=response_lens).sum())


_SHAPES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def shape_of(lm) -> DecoderShape:
    """:meth:`DecoderShape.from_model`, computed once per model."""
    try:
        return _SHAPES[lm]
    except KeyError:
        _SHAPES[lm] = shape = DecoderShape.from_model(lm)
        return shape


def step_metrics(lm, prompt_mask, response_mask, gen_s: float, score_s: float, update_s: float,
                 score_forwards: int, epochs: int, compile_s: float = 0.0) -> dict[str, float]:
    """The ``perf/`` rates of one online step on this process's rows.

    Args:
        lm: the policy's causal LM (its shape is read once).
        prompt_mask, response_mask: ``(B, P)``, ``(B, T)`` of the step's batch.
        gen_s, score_s, update_s: the phases' seconds (``score_s`` includes the reward).
        score_forwards: no-grad forwards of the policy's shape over the batch in the scoring phase (policy and/or
            reference; the reward model is not counted).
        epochs: forward + backward passes of the update over each row.
        compile_s: seconds spent compiling the decode step so far (cumulative; ``generation.compile``).
    Returns:
        ``perf/{gen,score,update}_flops`` (per step, this process), ``perf/*_flops_per_s``, ``perf/*_tokens_per_s``
        (generation: tokens generated per second of generation; scoring and update: prompt + response positions
        processed per second, each forward or epoch counted) and ``perf/compile_s``.
    """
    shape = shape_of(lm)
    p, n = _lengths(prompt_mask, response_mask)
    flops = {"gen": batch_generation_flops(shape, p, n),
             "score": score_forwards * batch_scoring_flops(shape, p, n),
             "update": batch_update_flops(shape, p, n, epochs)}
    secs = {"gen": gen_s, "score": score_s, "update": update_s}
    seq = float((p + n).sum())
    tokens = {"gen": float(n.sum()), "score": score_forwards * seq, "update": epochs * seq}
    m = {}
    for k, f in flops.items():
        m[f"perf/{k}_flops"] = f
        m[f"perf/{k}_flops_per_s"] = f / secs[k] if secs[k] > 0 else 0.0
        m[f"perf/{k}_tokens_per_s"] = tokens[k] / secs[k] if secs[k] > 0 else 0.0
    m["perf/compile_s"] = float(compile_s)
    return m


def matmul_rate(m: int, k: int, n: int, device, dtype, seconds: float = 0.3, backward: bool = False) -> float:
    """Measured FLOP/s of an ``(m, k) @ (k, n)`` product in ``dtype`` on ``device`` (median of repeated timings
    within ``seconds``): the rate an isolated product of a phase's shape reaches on this machine now. With
    ``backward`` the product's two backward products are timed with it (``3 x 2 m k n`` FLOPs)."""
    import torch

    from rlhf_exp.distributed import synchronize

    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    g = torch.randn(m, n, device=device, dtype=dtype)

    def once():
        c = a @ b
        if backward:
            g @ b.T
            a.T @ g
        return c

    once()
    synchronize(device)
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 5:
        t0 = time.perf_counter()
        once()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return (3 if backward else 1) * 2.0 * m * k * n / times[len(times) // 2]


def peak_memory_mb(device) -> tuple[str, float]:
    """``("gpu_peak_mb", torch.cuda.max_memory_allocated)`` on CUDA, else ``("cpu_peak_rss_mb", peak RSS)``."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return "gpu_peak_mb", torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return "cpu_peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_matmul_shapes(shape: DecoderShape, gen_rows: int, train_tokens: int) -> dict[str, tuple[int, int, int]]:
    """The product each phase's rate is read against: the MLP's first projection (``d_model -> 4 d_model``, the
    largest per-layer product of GPT-2/Llama-style blocks) at the phase's row count: one row per sequence in a
    decode step, one per token in the scoring and update forwards."""
    d = shape.d_model
    return {"gen": (max(gen_rows, 1), d, 4 * d), "score": (max(train_tokens, 1), d, 4 * d),
            "update": (max(train_tokens, 1), d, 4 * d)}


def reference_rates(shape: DecoderShape, gen_rows: int, train_tokens: int, device, dtype,
                    seconds: float = 0.3) -> dict[str, float]:
    """Measured FLOP/s of each phase's product (:func:`phase_matmul_shapes`; the update's with its backward)."""
    return {k: matmul_rate(*mkn, device=device, dtype=dtype, seconds=seconds, backward=(k == "update"))
            for k, mkn in phase_matmul_shapes(shape, gen_rows, train_tokens).items()}
