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
"""
from __future__ import annotations

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
