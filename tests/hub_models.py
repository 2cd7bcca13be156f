"""Tiny random checkpoints laid out exactly as the Hugging Face hub ships the real ones, for fast offline tests.

:func:`write_gpt2_checkpoint` writes the files of ``openai-community/gpt2`` (``config.json``,
``generation_config.json``, ``model.safetensors``, ``tokenizer.json``, ``vocab.json``, ``merges.txt`` and a
``tokenizer_config.json`` that is only ``{"model_max_length": ...}``: no pad token, no tokenizer class, so
``AutoTokenizer`` picks GPT-2's tokenizer from ``config.json`` and its special tokens default to
``<|endoftext|>``). ``extra_eos`` adds an instruct-style end-of-turn token listed beside ``<|endoftext|>`` in
``generation_config.json``'s ``eos_token_id``, as Qwen2.5-Instruct lists ``<|im_end|>`` and ``<|endoftext|>``.

Import the fixtures into a test module (``from tests.hub_models import gpt2_hub_dir``).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

CORPUS = ["the film was great and the acting was superb", "the plot was dull but the ending was good",
          "a terrible movie with awful dialogue", "i loved this movie", "i hated this film", "what a wonderful story",
          "the worst film of the year", "a fine cast and a clever script"] * 10
EOS = "<|endoftext|>"


def write_gpt2_checkpoint(d: Path, extra_eos: str | None = None, vocab_size: int = 320, n_positions: int = 128,
                          seed: int = 0) -> Path:
    """Write a random 2-layer GPT-2 in the hub's gpt2 layout to ``d`` and return ``d``.

    The BPE vocabulary (byte-level, like GPT-2's) is trained on a small movie-review corpus; ``<|endoftext|>`` is
    the last id, as 50256 is in gpt2. ``extra_eos``: a second special token (id after it) that ends a response.
    """
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=vocab_size - 1, min_frequency=1, show_progress=False)
    bpe.add_special_tokens([EOS] + ([extra_eos] if extra_eos else []))
    bpe.save_model(str(d))                       # vocab.json + merges.txt
    bpe.save(str(d / "tokenizer.json"))
    eos_id = bpe.token_to_id(EOS)
    n_vocab = bpe.get_vocab_size(with_added_tokens=True)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=n_vocab, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=eos_id, eos_token_id=eos_id)   # dropout 0.1, as gpt2 ships
    GPT2LMHeadModel(cfg).save_pretrained(d, safe_serialization=True)
    gen = {"bos_token_id": eos_id, "eos_token_id": eos_id}
    if extra_eos:
        gen["eos_token_id"] = [bpe.token_to_id(extra_eos), eos_id]
    (d / "generation_config.json").write_text(json.dumps(gen, indent=2))
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": n_positions}))
    if extra_eos:   # an added special token must be declared for AutoTokenizer to keep it whole
        (d / "special_tokens_map.json").write_text(json.dumps({"additional_special_tokens": [extra_eos]}))
    tok = AutoTokenizer.from_pretrained(d)
    assert tok.pad_token is None and tok.eos_token == EOS and len(tok) == n_vocab, (tok.pad_token, len(tok))
    return d


@pytest.fixture(scope="session")
def gpt2_hub_dir(tmp_path_factory) -> Path:
    """A GPT-2 checkpoint as the hub ships gpt2: no pad token anywhere."""
    return write_gpt2_checkpoint(tmp_path_factory.mktemp("gpt2_hub"))


@pytest.fixture(scope="session")
def gpt2_two_eos_dir(tmp_path_factory) -> Path:
    """The same with an end-of-turn token ``<|im_end|>`` listed in generation_config.json's eos_token_id."""
    return write_gpt2_checkpoint(tmp_path_factory.mktemp("gpt2_two_eos"), extra_eos="<|im_end|>")
