"""rlhf_exp: a Hydra-configured suite for comparing RLHF objectives on the same model, data, reward and budget.

The math (advantages, policy losses, KL estimators and controllers) lives in :mod:`rlhf_exp.core` as pure tensor
functions usable from any training loop.
"""
from rlhf_exp import config as _config  # noqa: F401  (registers the ${asset:...} resolver)

__version__ = "0.1.0"
