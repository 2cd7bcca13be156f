"""Analytic floating-point operation counts of a decoder-only LM, and the FLOP rate of each phase of an online step.

The count (docs/performance.md) is the arithmetic of the matrix products, per position the model processes:

    forward FLOPs = 2 * N * tokens                       every weight matrix outside the embeddings: one multiply
                                                         and one add per weight and position (N = non-embedding
                                                         parameters: attention and MLP weights, biases, norms)
                  + 4 * n_layer * d_attn * pairs         attention: the scores q.k and the weighted sum of the
                                                         values, 2 * d_attn each per (query, key) pair and layer
                  + 2 * d_model * V * logit_rows         the output head, for the positions whose logits are taken
    backward FLOPs = 2 * forward FLOPs                   gradients of the activations and of the weights (with
                                                         LoRA the frozen weights get no gradient: the update's count
                                                         is then an upper bound, about 1.5x the arithmetic)

``tokens`` are the positions fed to the model, ``pairs`` the (query, key) pairs attention computes for them summed
over positions (causal: position i of a sequence attends to i + 1 positions, so a sequence of n positions has
n (n + 1) / 2), ``logit_rows`` the positions whose next-token logits are computed, ``d_attn`` the width of the
queries (heads x head size). Kaplan et al. (2020, "Scaling laws", table 1) count ``2 N + 2 n_layer n_ctx d_attn`` per
token: their attention term is the scores only; PyTorch's ``FlopCounterMode`` counts both products of attention, as
here. Embedding look-ups, element-wise operations, norms' and softmaxes' arithmetic are not counted (a few percent).

Each phase counts the work it needs, not what an implementation spends on padding or on rows that already ended:

* generation: per row with ``p`` real prompt tokens and ``n`` generated ones, a prefill of the ``p`` prompt tokens
  (logits of the last only) and ``n - 1`` one-token steps (the last sampled token is not fed back): tokens
  ``p + n - 1``, pairs ``p (p + 1) / 2 + sum_{j=1}^{n-1} (p + j)``, logit rows ``n``;
* scoring: per no-grad forward (policy, reference) and row, ``p + n`` tokens, ``(p + n)(p + n + 1) / 2`` pairs and
  ``n`` logit rows (the log-probs of the response tokens);
* update: per epoch a forward and a backward pass (3 forwards) over the same rows.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
import torch


@dataclass(frozen=True)
class LMShape:
    """What the count needs of a decoder-only LM: layers, widths, vocabulary and non-embedding parameters."""

    n_layer: int
    d_model: int
    d_attn: int
    vocab: int
    non_embedding_params: int

    @classmethod
    def of(cls, lm) -> "LMShape":
        """From a Hugging Face causal LM (through peft and PolicyModel wrappers): the config's sizes and the
        parameters that are not input/position embeddings or an untied output head."""
        inner = lm
        for attr in ("lm",):                      # rlhf_exp.modeling.PolicyModel
            inner = getattr(inner, attr, inner)
        if hasattr(inner, "get_base_model"):      # peft
            inner = inner.get_base_model()
        cfg = inner.config.get_text_config(decoder=True) if hasattr(inner.config, "get_text_config") else inner.config
        d_model = int(_first(cfg, "hidden_size", "n_embd", "d_model"))
        n_head = int(_first(cfg, "num_attention_heads", "n_head"))
        head_dim = getattr(cfg, "head_dim", None) or d_model // n_head
        excluded = set()
        for module in (inner.get_input_embeddings(), inner.get_output_embeddings()):
            if module is not None:
                excluded.update(id(p) for p in module.parameters())
        for name, module in inner.named_modules():   # learned position embeddings (GPT-2's wpe)
            if isinstance(module, torch.nn.Embedding) and name.split(".")[-1] in ("wpe", "embed_positions"):
                excluded.update(id(p) for p in module.parameters())
        seen: set[int] = set()
        n = 0
        for p in inner.parameters():
            if id(p) not in excluded and id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        return cls(n_layer=int(_first(cfg, "num_hidden_layers", "n_layer")), d_model=d_model,
                   d_attn=int(n_head * head_dim), vocab=int(cfg.vocab_size), non_embedding_params=n)


def _first(cfg, *names):
    for name in names:
        if getattr(cfg, name, None) is not None:
            return getattr(cfg, name)
    raise ValueError(f"model config has none of {names}: cannot count its FLOPs")


def forward_flops(shape: LMShape, tokens: float, pairs: float, logit_rows: float) -> float:
    """Forward FLOPs for ``tokens`` positions, ``pairs`` attended (query, key) pairs and ``logit_rows`` output-head
    rows (see the module docstring)."""
    return (2.0 * shape.non_embedding_params * tokens + 4.0 * shape.n_layer * shape.d_attn * pairs
            + 2.0 * shape.d_model * shape.vocab * logit_rows)


def generation_flops(shape: LMShape, prompt_lens: torch.Tensor, response_lens: torch.Tensor) -> float:
    """FLOPs of sampling ``response_lens[i]`` tokens after ``prompt_lens[i]`` real prompt tokens, per row ``i``
    (prefill + ``n - 1`` one-token steps; ``(B,)`` each; rows with ``n = 0`` cost nothing)."""
    p, n = prompt_lens.double(), response_lens.double()
    live = (n > 0).double()
    steps = (n - 1).clamp(min=0)
    tokens = (p * live + steps).sum()
    pairs = (live * p * (p + 1) / 2 + steps * p + steps * (steps + 1) / 2).sum()
    return forward_flops(shape, float(tokens), float(pairs), float(n.sum()))


def scoring_flops(shape: LMShape, prompt_lens: torch.Tensor, response_lens: torch.Tensor) -> float:
    """FLOPs of one forward over each row's prompt + response, taking the response tokens' logits."""
    L = (prompt_lens + response_lens).double()
    return forward_flops(shape, float(L.sum()), float((L * (L + 1) / 2).sum()), float(response_lens.double().sum()))


def update_flops(shape: LMShape, prompt_lens: torch.Tensor, response_lens: torch.Tensor, epochs: int) -> float:
    """FLOPs of ``epochs`` forward + backward passes over the rows (backward = 2 x forward)."""
    return 3.0 * epochs * scoring_flops(shape, prompt_lens, response_lens)


_SHAPES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def shape_of(lm) -> LMShape:
    """:meth:`LMShape.of`, computed once per model."""
    try:
        return _SHAPES[lm]
    except KeyError:
        _SHAPES[lm] = shape = LMShape.of(lm)
        return shape


def step_metrics(lm, prompt_mask: torch.Tensor, response_mask: torch.Tensor, gen_s: float, score_s: float,
                 update_s: float, score_forwards: int, epochs: int, compile_s: float = 0.0) -> dict[str, float]:
    """The ``perf/`` rates of one online step on this process's rows.

    Args:
        lm: the policy (its shape is read once).
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
    p = prompt_mask.sum(dim=1).cpu()
    n = response_mask.sum(dim=1).cpu()
    flops = {"gen": generation_flops(shape, p, n), "score": score_forwards * scoring_flops(shape, p, n),
             "update": update_flops(shape, p, n, epochs)}
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
    if getattr(device, "type", str(device)) == "cuda":
        return "gpu_peak_mb", torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return "cpu_peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_matmul_shapes(shape: LMShape, gen_rows: int, train_tokens: int) -> dict[str, tuple[int, int, int]]:
    """The product each phase's rate is read against: the MLP's first projection (``d_model -> 4 d_model``, the
    largest per-layer product of GPT-2/Llama-style blocks) at the phase's row count: one row per sequence in a
    decode step, one per token in the scoring and update forwards."""
    d = shape.d_model
    return {"gen": (max(gen_rows, 1), d, 4 * d), "score": (max(train_tokens, 1), d, 4 * d),
            "update": (max(train_tokens, 1), d, 4 * d)}


def reference_rates(shape: LMShape, gen_rows: int, train_tokens: int, device, dtype,
                    seconds: float = 0.3) -> dict[str, float]:
    """Measured FLOP/s of each phase's product (:func:`phase_matmul_shapes`; the update's with its backward)."""
    return {k: matmul_rate(*mkn, device=device, dtype=dtype, seconds=seconds, backward=(k == "update"))
            for k, mkn in phase_matmul_shapes(shape, gen_rows, train_tokens).items()}
