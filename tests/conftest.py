"""Shared fixtures: compose the real Hydra config, and tiny random Hugging Face models for fast tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def compose(overrides: list[str] | None = None):
    """The real composed config (conf/config.yaml) with command-line style overrides."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from rlhf_exp.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


def _override_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


def objective_from_yaml(name: str, kl: dict | None = None, max_new_tokens: int | None = None, **overrides):
    """The objective ``python -m rlhf_exp objective=<name>`` builds, from the composed config (its yaml holds every
    default): ``overrides`` are its settings (``group_size=2`` is ``objective.group_size=2``; a nested block as
    ``**{"dynamic_sampling.enable": True}``; a key the yaml lacks as ``**{"+key": "<yaml value>"}``), ``kl`` settings of the kl block (``{"estimator": "k2"}``);
    ``max_new_tokens`` (an online objective's constant normaliser) is ``generation.max_new_tokens`` unless given."""
    from rlhf_exp.objectives import build_offline_objective, build_online_objective

    args = [f"objective={name}"] + [f"+objective.{k[1:]}={v}" if k.startswith("+") else
                                    f"objective.{k}={_override_value(v)}" for k, v in overrides.items()]
    args += [f"kl.{k}={_override_value(v)}" for k, v in (kl or {}).items()]
    cfg = compose(args)
    if cfg.objective.kind == "offline":
        return build_offline_objective(cfg.objective)
    return build_online_objective(cfg.objective, cfg.kl, int(cfg.generation.max_new_tokens if max_new_tokens is None
                                                             else max_new_tokens))


def objective_names(kind: str) -> list[str]:
    """The objectives of one kind (``online`` | ``offline``): the yaml files in ``conf/objective/``."""
    from omegaconf import OmegaConf

    from rlhf_exp.config import CONFIG_DIR

    return sorted(p.stem for p in (CONFIG_DIR / "objective").glob("*.yaml")
                  if OmegaConf.load(p).objective.kind == kind)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A random 2-layer GPT-2 (dropout 0.1, as GPT-2 ships) with a byte-level tokenizer saved in HF format."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny_gpt2")
    bpe = ByteLevelBPETokenizer()
    corpus = ["the film was great and the acting was superb", "the plot was dull but the ending was good",
              "a terrible movie with awful dialogue"] * 20
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    eos = "<|endoftext|>"
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=eos, eos_token=eos, unk_token=eos)
    tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(d, safe_serialization=True)
    return d
