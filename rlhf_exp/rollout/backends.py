"""Choosing the rollout engine: ``generation.backend`` names one of :data:`BACKENDS`.

Apart from :mod:`rlhf_exp.rollout.engine` (the interface and the ``hf`` engine) so that the ``vllm`` engine, which
builds on that interface, is imported from here and not from the module it extends (no import cycle).
"""
from __future__ import annotations

from typing import Sequence

from rlhf_exp.rollout.engine import HFGenerator, RolloutEngine

BACKENDS = ("hf", "vllm")


def backend_of(cfg) -> str:
    """``generation.backend`` of a composed config."""
    return str(cfg.generation.backend)


def build_engine(cfg, accelerator, policy, tokenizer, stop_ids: Sequence[int], pad_id: int) -> RolloutEngine:
    """The engine ``generation.backend`` names, for the prepared ``policy``."""
    backend = backend_of(cfg)
    if backend == "hf":
        return HFGenerator(accelerator, policy, stop_ids, pad_id, compile=bool(cfg.generation.compile))
    if backend == "vllm":
        from rlhf_exp.rollout.vllm_engine import VLLMGenerator   # vLLM itself is imported only when it is used

        return VLLMGenerator.from_config(cfg, accelerator, policy, tokenizer, stop_ids, pad_id)
    raise ValueError(f"generation.backend={backend!r}: valid values are {', '.join(BACKENDS)}.")
