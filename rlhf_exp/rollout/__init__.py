"""Rollouts: sampling settings and padding (:mod:`.sampling`), the rollout engines that generate
(:mod:`.engine`: ``generation.backend=hf|vllm``), the no-grad scoring pass (:mod:`.scoring`) and the collector that
puts one rollout batch together (:mod:`.collect`). docs/rollout.md.

The helpers the rest of the package and the tests import from here (``from rlhf_exp.rollout import SamplingSettings,
generate, pad_left, sample_lengths``) are re-exported; the engine, scorer and collector are imported from their
modules, so that importing this package stays light (vLLM is imported only when ``generation.backend=vllm``).
"""
from rlhf_exp.rollout.sampling import (EosIds, SamplingSettings, as_id_list, generate, generation_config, pad_left,
                                       pad_right, sample_lengths, truncate_responses)

__all__ = ["EosIds", "SamplingSettings", "as_id_list", "generate", "generation_config", "pad_left", "pad_right",
           "sample_lengths", "truncate_responses"]
