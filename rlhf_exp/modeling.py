"""Loading models and tokenizers, the value head, and the one forward pass every objective uses.

Everything is loaded with ``from_pretrained`` from a local directory or a Hugging Face hub id, so the embedded tiny
models and ``gpt2`` go through the same code. Offline, a hub id that is not in the local cache fails at once with a
message that says what to download and which option to set, instead of retrying the network.
"""
from __future__ import annotations

import copy
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from rlhf_exp.core.losses import entropy_from_logits, logprobs_from_logits

class ModelNotAvailableError(RuntimeError):
    """A model, tokenizer or reward model path that cannot be loaded here."""


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((endpoint, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline_env() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


# Files a tokenizer can be built from (fast tokenizer, BPE vocab + merges, sentencepiece, WordPiece, tiktoken).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                   "vocab.txt", "tokenizer.tiktoken")


def has_tokenizer_files(path: Path) -> bool:
    return any((Path(path) / f).exists() for f in TOKENIZER_FILES)


def _listing(p: Path, n: int = 12) -> str:
    return ", ".join(sorted(x.name for x in p.iterdir())[:n]) or "nothing"


def resolve_pretrained(name_or_path: str, option: str, kind: str = "model") -> str:
    """Return something ``from_pretrained`` can load without hanging, or raise a clear error.

    Args:
        name_or_path: a local directory or a hub id such as ``lvwerra/gpt2-imdb``.
        option: the config key that set it (``model.path``, ``reward_model.path``...), named in the error.
        kind: ``model`` (a local directory must hold ``config.json``) or ``tokenizer`` (it must hold tokenizer
            files: a tokenizer-only folder is fine).
    """
    if name_or_path is None or str(name_or_path).strip() == "":
        raise ModelNotAvailableError(f"{option} is empty: set it to a local Hugging Face directory or a hub id.")
    p = Path(os.path.expanduser(str(name_or_path)))
    if p.is_dir():
        if kind == "tokenizer":
            if not has_tokenizer_files(p) and (p / "config.json").exists():
                raise ModelNotAvailableError(
                    f"{option}={name_or_path!r} is a model folder without tokenizer files (one of "
                    f"{', '.join(TOKENIZER_FILES)}; it holds: {_listing(p)}). Copy the tokenizer files of the model "
                    f"it was trained from into it (tokenizer.save_pretrained), or set model.tokenizer=<a folder "
                    f"with them>.")
            if not has_tokenizer_files(p):
                raise ModelNotAvailableError(
                    f"{option}={name_or_path!r} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); it "
                    f"holds: {_listing(p)}. Point {option} at the folder that tokenizer.save_pretrained wrote (or "
                    f"a model folder that includes its tokenizer).")
            return str(p)
        if not (p / "config.json").exists():
            raise ModelNotAvailableError(
                f"{option}={name_or_path!r} is a directory without config.json (it holds: {_listing(p)}); point it "
                f"at a Hugging Face model directory (the folder that save_pretrained wrote)."
            )
        return str(p)
    if p.exists():
        raise ModelNotAvailableError(f"{option}={name_or_path!r} is a file; set {option} to the model's directory "
                                     f"(the folder that holds config.json), e.g. {option}={p.parent}.")
    looks_local = str(name_or_path).startswith(("/", "./", "../", "~")) or str(name_or_path).count("/") > 1
    if looks_local:
        raise ModelNotAvailableError(f"{option}={name_or_path!r}: no such directory. Set {option}=<existing local dir>.")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(str(name_or_path), local_files_only=True)
    except Exception:
        pass
    if _offline_env() or not _hub_reachable():
        raise ModelNotAvailableError(
            f"{option}={name_or_path!r} is neither a local directory (none at {Path(str(name_or_path)).resolve()}) "
            f"nor a hub id in the local Hugging Face cache, and the hub cannot be reached from here. If it is a "
            f"hub id, on a machine with internet run\n"
            f"    huggingface-cli download {name_or_path} --local-dir /path/to/{Path(str(name_or_path)).name}\n"
            f"copy the folder here and set {option}=/path/to/{Path(str(name_or_path)).name} (or pre-fill the "
            f"cache and set HF_HUB_OFFLINE=1)."
        )
    return str(name_or_path)


def _torch_dtype(name: str | None) -> torch.dtype | None:
    if name in (None, "auto", "float32", "fp32"):
        return torch.float32
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"Unknown dtype {name!r}. Valid: float32, bfloat16, float16.")
    return table[name]


def notice(message: str) -> None:
    """A one-line notice on stdout, from the main process only."""
    if os.environ.get("RANK", "0") == "0":
        print(f"[rlhf_exp] {message}", flush=True)


def load_tokenizer(name_or_path: str, option: str = "model.tokenizer", padding_side: str = "left"):
    """A tokenizer with a pad token (EOS when it has none, with a notice) and the requested padding side.

    ``name_or_path`` may be a model folder with its tokenizer files or a tokenizer-only folder
    (``tokenizer.save_pretrained``); a folder without tokenizer files is an error, not an empty tokenizer.
    """
    from transformers import AutoTokenizer

    path = resolve_pretrained(name_or_path, option, kind="tokenizer")
    if Path(path).is_dir() and not has_tokenizer_files(Path(path)):
        raise ModelNotAvailableError(
            f"{option}={name_or_path!r} holds no tokenizer files (one of {', '.join(TOKENIZER_FILES)}; it holds: "
            f"{_listing(Path(path))}). Copy the tokenizer files of the model it was trained from into it "
            f"(tokenizer.save_pretrained), or set model.tokenizer=<a folder with them>.")
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001: re-raised with the option named
        raise ModelNotAvailableError(f"{option}={name_or_path!r}: loading the tokenizer from {path} failed "
                                     f"({type(e).__name__}: {e}).") from e
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelNotAvailableError(
                f"The tokenizer at {option}={name_or_path!r} has neither a pad nor an EOS token. A tokenizer folder "
                f"copied from a model folder may name its special tokens only through the model's config.json (GPT-2 "
                f"does): save it with tokenizer.save_pretrained(folder) instead, or add \"eos_token\" to its "
                f"tokenizer_config.json.")
        tok.pad_token = tok.eos_token
        notice(f"{option}={name_or_path}: the tokenizer has no pad token; padding with its EOS token "
               f"{tok.eos_token!r} (id {tok.eos_token_id}).")
    tok.padding_side = padding_side
    return tok


def eos_token_ids(lm: nn.Module, tokenizer) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS, then each EOS id of the model's generation config
    (``generation_config.json``; Qwen2.5-Instruct lists ``<|im_end|>`` and ``<|endoftext|>``), without repeats."""
    ids: list[int] = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    gen = getattr(lm, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    for i in ([extra] if isinstance(extra, int) else list(extra or [])):
        if int(i) not in ids:
            ids.append(int(i))
    if not ids:
        raise ModelNotAvailableError("Neither the tokenizer nor the model's generation_config.json names an EOS token; "
                                     "set eos_token in tokenizer_config.json.")
    return ids


def embedding_rows(model: nn.Module) -> Optional[int]:
    """Rows of the input embedding matrix (the ids the model can read), through PolicyModel/peft wrappers."""
    inner = getattr(model, "lm", model)
    try:
        return int(inner.get_input_embeddings().weight.shape[0])
    except (AttributeError, NotImplementedError):
        return None


def check_tokenizer_fits(model: nn.Module, tokenizer, model_option: str, tokenizer_option: str) -> None:
    """Raise a clear error when ``tokenizer`` cannot be the model's: it has more tokens than the model has
    embeddings (ids past the table fail with IndexError), or far fewer (a tokenizer of another model; real
    checkpoints pad the table by a few hundred rows at most, e.g. Qwen2.5: 151,665 tokens in 151,936 rows)."""
    rows, n = embedding_rows(model), len(tokenizer)
    if rows is None:
        return
    if n > rows:
        raise ModelNotAvailableError(
            f"The tokenizer ({tokenizer_option}) has {n} tokens but the model ({model_option}) has only {rows} "
            f"embeddings: token ids >= {rows} cannot be read. Use the tokenizer the model was trained with (leave "
            f"model.tokenizer unset to use the one saved with model.path); if you added tokens on purpose, resize "
            f"the model first (model.resize_token_embeddings(len(tokenizer)); save_pretrained).")
    if rows - n > max(1024, rows // 64):
        raise ModelNotAvailableError(
            f"The tokenizer ({tokenizer_option}) has {n} tokens but the model ({model_option}) has {rows} "
            f"embeddings: this is not the model's tokenizer (its text would be read as other tokens). Use the "
            f"tokenizer the model was trained with: leave model.tokenizer unset to use the one saved with "
            f"model.path, or point model.tokenizer at the model's own tokenizer folder.")


def _weights_files(path: str) -> list[str]:
    p = Path(path)
    return sorted(str(f) for f in p.glob("*.safetensors")) + sorted(str(f) for f in p.glob("*.bin")) if p.is_dir() else []


def from_pretrained_checked(auto_cls, path: str, option: str, name_or_path: str, **kwargs):
    """``auto_cls.from_pretrained(path, **kwargs)``; a failure (a truncated or corrupted weights file, a config
    transformers cannot read) is re-raised as :class:`ModelNotAvailableError` naming the option and the files."""
    try:
        return auto_cls.from_pretrained(path, **kwargs)
    except Exception as e:  # noqa: BLE001: re-raised with the option and path named
        files = _weights_files(path)
        corrupt = "safetensor" in type(e).__name__.lower() or any(
            w in str(e).lower() for w in ("deserializ", "header", "incomplete metadata", "unexpected eof"))
        hint = (f" The weights file ({', '.join(files) or path}) looks truncated or corrupted: download or copy it "
                f"again, then check its size against the source." if corrupt else "")
        raise ModelNotAvailableError(f"{option}={name_or_path!r}: loading {auto_cls.__name__.replace('Auto', '')} "
                                     f"from {path} failed ({type(e).__name__}: {e}).{hint}") from e


CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")


def check_causal_lm_checkpoint(path: str, option: str, name_or_path: str) -> None:
    """Refuse a checkpoint saved as a classifier (a reward model, say) where a causal LM is expected: transformers
    would load its body under a language-model head silently and score text with it."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.exists():
        return
    import json

    archs = json.loads(cfg_file.read_text()).get("architectures") or []
    bad = [a for a in archs if a.endswith(CLASSIFIER_SUFFIXES)]
    if bad:
        raise ModelNotAvailableError(
            f"{option}={name_or_path!r} is a {bad[0]} (a classifier such as a reward model), not a causal language "
            f"model. {option} must be a policy checkpoint (e.g. the SFT run's policy/ folder). To score with this "
            f"model use reward_model=learned reward_model.path={name_or_path}.")


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability to 0 (GPT-2 ships with 0.1): the policy that samples must be the policy scored."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    for attr in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout", "attention_dropout",
                 "hidden_dropout", "dropout", "hidden_dropout_prob", "attention_probs_dropout_prob"):
        if hasattr(getattr(model, "config", None), attr) and isinstance(getattr(model.config, attr), float):
            setattr(model.config, attr, 0.0)
    return model


def load_causal_lm(name_or_path: str, option: str = "model.path", dtype: str | None = None):
    """``AutoModelForCausalLM.from_pretrained`` with dropout disabled and a clear error when the path is missing."""
    from transformers import AutoModelForCausalLM

    path = resolve_pretrained(name_or_path, option)
    check_causal_lm_checkpoint(path, option, name_or_path)
    model = from_pretrained_checked(AutoModelForCausalLM, path, option, name_or_path, dtype=_torch_dtype(dtype))
    return disable_dropout(model)


class ValueHead(nn.Module):
    """A scalar head on the policy's last hidden state: ``(B, T, H) -> (B, T)``."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1) ** 0.5 * 0.1)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


def hidden_size_of(lm: nn.Module) -> int:
    cfg = lm.config
    for attr in ("hidden_size", "n_embd", "d_model", "dim"):
        if isinstance(getattr(cfg, attr, None), int):
            return getattr(cfg, attr)
    raise ValueError(f"Cannot find the hidden size in {type(cfg).__name__}; expected hidden_size or n_embd.")


@dataclass
class ResponseOutput:
    """What one forward pass over prompt+response gives, restricted to the response tokens.

    logprobs: ``(B, T)``; entropy: ``(B, T)`` or None; values: ``(B, T)`` or None; logits: ``(B, T, V)`` or None.
    """

    logprobs: torch.Tensor
    entropy: Optional[torch.Tensor] = None
    values: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on the first real token of each row, for left-padded batches. ``(B, L)``."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PolicyModel(nn.Module):
    """The trained causal LM, plus a value head on its last hidden state when the objective needs one.

    One module so that DDP/FSDP/DeepSpeed wrap policy and value head together.
    """

    def __init__(self, lm: nn.Module, value_head: bool = False):
        super().__init__()
        self.lm = lm
        self.value_head = ValueHead(hidden_size_of(lm)) if value_head else None
        # FSDP's transformer-based wrapping looks for the block classes here.
        self._no_split_modules = getattr(lm, "_no_split_modules", None)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_len: int,
        temperature: float = 1.0,
        return_values: bool = False,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Logits that predict the last ``response_len`` tokens, and the values of the states before them.

        Args:
            input_ids: ``(B, P + T)`` left-padded prompt followed by the right-padded response.
            attention_mask: ``(B, P + T)``.
            response_len: ``T``.
        Returns:
            ``logits (B, T, V)`` divided by ``temperature``, and ``values (B, T)`` or None.
        """
        want_values = return_values and self.value_head is not None
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
            output_hidden_states=want_values,
            logits_to_keep=response_len + 1,
        )
        logits = out.logits[:, -(response_len + 1):-1, :]
        if temperature != 1.0:
            logits = logits / temperature
        values = None
        if want_values:
            hidden = out.hidden_states[-1][:, -(response_len + 1):-1, :]
            values = self.value_head(hidden)
        return logits, values


def score_responses(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
    return_values: bool = False,
    return_logits: bool = False,
) -> ResponseOutput:
    """Per-token log-probs (and optionally entropy, values, logits) of the response tokens under ``model``.

    ``model`` is a :class:`PolicyModel` (or a DDP/FSDP wrapper of one). Position ids come from the attention mask, so
    a sequence scores the same in a left-padded batch as alone.

    Args:
        prompt_ids, prompt_mask: ``(B, P)`` left-padded.
        response_ids, response_mask: ``(B, T)`` right-padded.
    """
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], dim=1)
    T = response_ids.shape[1]
    logits, values = model(input_ids, attention_mask, T, temperature=temperature, return_values=return_values)
    logprobs = logprobs_from_logits(logits, response_ids)
    entropy = entropy_from_logits(logits) if return_entropy else None
    return ResponseOutput(logprobs=logprobs, entropy=entropy, values=values, logits=logits if return_logits else None)


def apply_lora(lm: nn.Module, lora_cfg) -> nn.Module:
    """Wrap ``lm`` with LoRA adapters (peft); only the adapters train.

    ``lora_cfg``: ``r`` (rank), ``alpha``, ``dropout`` (keep 0: the sampler must be the policy scored),
    ``target_modules`` (``all-linear`` or a list of module names).
    """
    from peft import LoraConfig, get_peft_model

    target = lora_cfg["target_modules"]
    target = target if isinstance(target, str) else list(target)
    cfg = LoraConfig(r=int(lora_cfg["r"]), lora_alpha=float(lora_cfg["alpha"]),
                     lora_dropout=float(lora_cfg["dropout"]), target_modules=target, task_type="CAUSAL_LM")
    return get_peft_model(lm, cfg)


def is_peft_model(lm: nn.Module) -> bool:
    return hasattr(lm, "disable_adapter") and hasattr(lm, "peft_config")


class AdapterDisabledReference(nn.Module):
    """The reference policy of a LoRA run: the same network with its adapters switched off, not a second copy.

    Forwards like :class:`PolicyModel` (no values), always without gradient.
    """

    def __init__(self, policy: PolicyModel):
        super().__init__()
        object.__setattr__(self, "_policy", policy)  # not a submodule: its parameters belong to the policy

    def forward(self, input_ids, attention_mask, response_len, temperature=1.0, return_values=False):
        with torch.no_grad(), self._policy.lm.disable_adapter():
            logits, _ = self._policy(input_ids, attention_mask, response_len, temperature, return_values=False)
        return logits, None


def max_positions(model: nn.Module) -> Optional[int]:
    """The longest sequence the model's position embeddings allow (``n_positions`` / ``max_position_embeddings`` of
    its config; through wrappers such as :class:`PolicyModel` and peft), or None when the config names none."""
    inner = getattr(model, "lm", model)
    config = getattr(inner, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (non-reentrant, so it works with frozen inputs and LoRA)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def load_policy(model_cfg, value_head: bool = False) -> PolicyModel:
    """The policy to train, from the ``model`` config group: ``path``, ``dtype``, ``gradient_checkpointing`` and
    ``lora`` (``lora.r > 0`` wraps the LM with peft adapters; only they and the value head train)."""
    lm = load_causal_lm(model_cfg["path"], "model.path", model_cfg["dtype"])
    if model_cfg["gradient_checkpointing"]:
        enable_gradient_checkpointing(lm)
    lora = model_cfg["lora"]
    if int(lora["r"]) > 0:
        lm = apply_lora(lm, lora)
    return PolicyModel(lm, value_head=value_head)


def reference_of(policy: PolicyModel, ref_path: Optional[str] = None, dtype: Optional[str] = None) -> nn.Module:
    """The frozen reference policy for ``policy`` as loaded (call before training).

    Default: with LoRA the same network with its adapters off (no second copy); otherwise a frozen copy of the LM
    without a value head. ``ref_path`` (``model.ref_path``) loads another checkpoint instead, e.g. the SFT policy a
    trained policy started from, to measure its KL to that policy; it must share the policy's vocabulary.
    """
    if ref_path:
        if is_peft_model(policy.lm):
            raise ValueError("model.ref_path and model.lora.r > 0 do not go together: a LoRA run's reference is its own "
                             "base model with the adapters off. Set one of them.")
        ref = PolicyModel(load_causal_lm(ref_path, "model.ref_path", dtype), value_head=False)
        v_ref, v_pol = ref.lm.get_output_embeddings().weight.shape[0], policy.lm.get_output_embeddings().weight.shape[0]
        if v_ref != v_pol:
            raise ValueError(f"model.ref_path={ref_path} has a vocabulary of {v_ref} tokens and the policy "
                             f"(model.path) {v_pol}: the KL needs the same tokenizer. Use a reference of the same "
                             f"family, or leave model.ref_path=null (the initial policy).")
        return freeze(ref)
    if is_peft_model(policy.lm):
        return AdapterDisabledReference(policy)
    return frozen_copy(PolicyModel(policy.lm, value_head=False))


def freeze(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every parameter frozen (in place)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A detached, frozen copy in eval mode (the reference policy)."""
    return freeze(copy.deepcopy(model))
