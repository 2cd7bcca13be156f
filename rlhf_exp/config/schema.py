"""The typed schema of the composed config: for every setting its type, its valid range (a predicate and the text
an error quotes) and a one-line doc. Defaults are NOT here: the yaml files in ``conf/`` are their one home; the
schema checks what the yaml (and the command line) gives, and tests keep the two in step (every yaml key is
declared here, every declared key is in some yaml).

Blocks are dataclasses without defaults (they are never instantiated: their fields are read with
:func:`dataclasses.fields`). A config group whose options differ in kind has a registry keyed by that kind
(``reward_model.kind``, ``dataset.kind``, ``logger.kind``, ``kl.controller``, ``objective.kind``): a new kind
registers its block with :func:`register_kind` (for a reward kind: ``register_kind("reward_model", "math_verify",
MathVerifyReward)``, its block a subclass of :class:`RewardBase` naming its preset).

:func:`check_block` checks one block; :mod:`rlhf_exp.config.validation` runs it over the whole config.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Optional, Union, get_args, get_origin, get_type_hints

from rlhf_exp.config.errors import ConfigError, closest
from rlhf_exp.config.paths import CONFIG_DIR

ONLINE, OFFLINE = "online", "offline"


# ------------------------------------------------------------------------------------------------ ranges
@dataclass(frozen=True)
class Range:
    """A valid range: ``ok(value)`` for a value of the right type, and ``text`` (what an error says it must be),
    with an optional ``note`` (why, or what a special value means) in parentheses after it."""

    ok: Callable[[Any], bool]
    text: str
    note: str = ""


def at_least(lo, note: str = "") -> Range:
    return Range(lambda v: v >= lo, f">= {lo}", note)


def above(lo, note: str = "") -> Range:
    return Range(lambda v: v > lo, f"> {lo}", note)


def within(lo, hi, *, open_lo: bool = False, open_hi: bool = False, note: str = "") -> Range:
    def ok(v):
        return (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi)

    return Range(ok, f"in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}", note)


def setting(doc: str, range: Range | None = None, *, absent_ok: bool = False) -> Any:
    """One setting of a block: ``doc`` (one line), ``range`` (None: any value of its type) and ``absent_ok`` (the
    key may be missing from an option's yaml; the doc says what its absence means)."""
    return field(metadata={"doc": doc, "range": range, "absent_ok": absent_ok})


class Block:
    """Base of the schema blocks. ``open_keys``: keys beyond the declared ones are allowed here (checked elsewhere,
    e.g. an objective's own parameters); ``source``: where its defaults live (for the docs)."""

    open_keys: ClassVar[bool] = False
    source: ClassVar[str] = ""

    @classmethod
    def check_more(cls, block: dict, path: str) -> None:
        """Checks beyond one setting at a time (override in a block that needs them)."""


# ------------------------------------------------------------------------------------------------ top level
@dataclass
class Train(Block):
    """Optimisation: the length of the run, batch geometry, AdamW, precision and checkpoints."""

    steps: int = setting("rollout+update iterations (offline objectives: optimizer steps)",
                         at_least(0, "0 = evaluate only"))
    batch_size: int = setting("sequences per step, all processes together", at_least(1))
    mini_batch_size: Optional[int] = setting(
        "sequences per optimizer step, all processes together (divides batch_size); null = batch_size", at_least(1))
    micro_batch_size: Optional[int] = setting(
        "sequences per forward/backward (divides mini_batch_size); null = mini_batch_size (no accumulation)",
        at_least(1))
    epochs: int = setting("passes over each rollout batch (each objective sets its conventional value)",
                          at_least(1))
    forward_batch_size: int = setting("chunk size of the no-grad forwards (scoring, reference)", at_least(1))
    lr: float = setting("AdamW learning rate", above(0))
    lr_schedule: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                         "polynomial", "inverse_sqrt"] = setting(
        "learning-rate schedule (transformers.get_scheduler); constant ignores warmup_steps")
    warmup_steps: int = setting("warm-up length in optimizer steps (not with lr_schedule=constant)", at_least(0))
    adam_betas: list = setting(
        "AdamW's (beta1, beta2)",
        Range(lambda v: len(v) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                            for b in v), "two numbers in [0, 1)"))
    adam_eps: float = setting("AdamW's epsilon", above(0))
    weight_decay: float = setting("AdamW's decoupled weight decay", at_least(0))
    adamw_impl: Literal["foreach", "fused", "for-loop"] = setting(
        "PyTorch's AdamW implementation (docs/performance.md): foreach and for-loop give the same numbers")
    max_grad_norm: float = setting(
        "gradients are clipped to this global norm",
        above(0, "gradients are always clipped to this norm, and 0 would clip every update to nothing; for no "
                 "clipping use a large value such as 1e9"))
    mixed_precision: Literal["no", "bf16", "fp16"] = setting("autocast precision of the forwards (fp16: CUDA only)")
    save_model: bool = setting("save the final policy in Hugging Face format to <run dir>/policy")
    checkpoint_every: int = setting("write checkpoints/step_<k> every N steps and at the last step",
                                    at_least(0, "0 = no checkpoints"))
    keep_checkpoints: Optional[int] = setting("keep the newest K checkpoints; null = keep all", at_least(1))
    resume: Union[bool, str, None] = setting(
        "auto: continue from the run folder's newest checkpoint | <path> of a checkpoint or run folder | false: "
        "refuse a folder that already holds a run")


@dataclass
class VLLM(Block):
    """The colocated vLLM engine of ``generation.backend=vllm`` (docs/rollout.md)."""

    gpu_memory_utilization: float = setting("share of the GPU's memory vLLM may take (weights + KV cache)",
                                            within(0, 1, open_lo=True))
    kv_cache_gb: Optional[float] = setting(
        "the KV cache in GiB; null = what gpu_memory_utilization leaves on GPU, 1 GiB on CPU", above(0))
    tensor_parallel_size: int = setting(
        "GPUs per engine",
        Range(lambda v: v == 1, "1", "each training process holds its own whole engine (TRL's colocate mode shards "
                                     "one engine over a group of training processes; that is not implemented here, "
                                     "docs/rollout.md)"))
    max_model_len: Optional[int] = setting("prompt + response tokens the engine holds; null = the model's limit",
                                           at_least(1))
    enable_sleep_mode: bool = setting("GPU: free vLLM's KV cache (and offload its weights) during the updates")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting("the engine's weights; auto = model.dtype")
    enforce_eager: bool = setting("no CUDA graphs (faster start, slower decoding)")
    importance_correction: bool = setting(
        "truncated importance sampling: policy-gradient terms times min(pi_old / pi_vllm, importance_cap)")
    importance_cap: float = setting("the cap C of importance_correction",
                                    at_least(1, "importance weights are min(pi_old / pi_vllm, cap); verl and "
                                                "OpenRLHF use 2"))


@dataclass
class Generation(Block):
    """Sampling of the training rollouts (pure sampling: the sampler is the policy that is scored)."""

    max_new_tokens: int = setting("each response is cut at a length drawn uniformly from [min_new_tokens, "
                                  "max_new_tokens], or at its first EOS", at_least(1))
    min_new_tokens: int = setting("the shortest length limit drawn (<= max_new_tokens)", at_least(1))
    temperature: float = setting(
        "sampling temperature (log-probs are computed with the same one)",
        above(0, "training rollouts always sample; for greedy evaluation set eval.do_sample=false"))
    top_k: int = setting("keep the k most likely tokens; top-k/top-p make training off-policy (a warning says so)",
                         at_least(0, "0 = off"))
    top_p: float = setting("nucleus sampling mass", within(0, 1, open_lo=True, note="1 = off"))
    backend: Literal["hf", "vllm"] = setting(
        "hf: our KV-cache decode loop on the trained model | vllm: a colocated vLLM engine, weights synced after "
        "every update (pip install -e .[vllm]; docs/rollout.md)")
    compile: bool = setting("backend=hf: torch.compile the decode loop's one-token step over its static KV cache "
                            "(CUDA graphs on a GPU); the first rollouts compile, logged apart as perf/compile_s")
    vllm: VLLM = setting("generation.backend=vllm only")


@dataclass
class Eval(Block):
    """The policy evaluation on the held-out prompts."""

    every: int = setting("evaluate every N steps (and always at step 0 and at the end)",
                         at_least(0, "0 = only at the start and the end"))
    do_sample: bool = setting("true: seeded sampling with the training sampler; false: greedy decoding")
    seed: int = setting("the same random draws (response lengths, samples) at every evaluation",
                        within(0, 2 ** 32, open_hi=True))
    batch_size: int = setting("prompts per evaluation batch", at_least(1))
    num_samples_to_log: int = setting("completions written to samples.jsonl / the W&B table at each evaluation",
                                      at_least(0))


@dataclass
class Reward(Block):
    """Preprocessing of the task reward in the online loop, the same for every objective."""

    normalize: bool = setting("running mean/std normalisation of the scores")
    scale: float = setting("scores are multiplied by this", Range(lambda v: v != 0, "non-zero",
                                                                  "0 would make every reward 0"))
    clip: Optional[float] = setting("clip to [-clip, clip] after scaling; null = no clipping",
                                    above(0, "rewards are clipped to [-clip, clip]; null = no clipping"))


@dataclass
class Run(Block):
    """The settings of ``conf/config.yaml`` outside the config groups."""

    source: ClassVar[str] = "conf/config.yaml"
    seed: int = setting("seed of every random stream of the run", within(0, 2 ** 32, open_hi=True))
    device: Literal["auto", "cpu", "cuda"] = setting("auto = cuda when a GPU is visible, else cpu")
    run_name: Optional[str] = setting("display name in W&B; null = objective-kl plus the command-line overrides")
    train: Train = setting("optimisation")
    generation: Generation = setting("rollout sampling")
    eval: Eval = setting("policy evaluation")
    reward: Reward = setting("reward preprocessing")


# ------------------------------------------------------------------------------------------------ objective
LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


@dataclass
class ObjectiveBase(Block):
    """The keys every objective has. Its own parameters are declared and checked by ``rlhf_exp.objectives``
    (``validate_objective``), so other keys are allowed here."""

    open_keys: ClassVar[bool] = True
    name: str = setting("the objective (rlhf_exp/objectives)")
    kind: Literal["online", "offline"] = setting("online: rollouts and the RL loop | offline: a dataset of records")


@dataclass
class OnlineObjectiveBase(ObjectiveBase):
    """Objectives trained on rollouts of the policy (rlhf_exp/train/online.py)."""

    adaptive_kl_coef: float = setting("kl=adaptive's initial kl.kl_coef for this objective (kl.kl_coef=<x> wins)",
                                      above(0, "the adaptive controller multiplies it: 0 would stay 0"))
    adaptive_kl_horizon: float = setting(
        "kl=adaptive's kl.horizon for this objective (kl.horizon=<n> wins); absent: kl/adaptive.yaml's",
        above(0), absent_ok=True)
    entropy_coef: float = setting("weight of the entropy bonus", at_least(0, "0 = off"))
    mask_truncated_completions: bool = setting("responses cut at their length limit (no EOS) take no loss (TRL)")
    loss_aggregation: Literal[LOSS_AGGREGATIONS] = setting(  # type: ignore[valid-type]
        "how per-token losses become one number (rlhf_exp/core/losses.py:aggregate_loss)")


@dataclass
class OfflineObjectiveBase(ObjectiveBase):
    """Objectives trained on a dataset of records (rlhf_exp/train/offline.py)."""

    max_length: int = setting("prompt + completion tokens of a record (longer ones are cut)", at_least(1))
    max_prompt_tokens: Optional[int] = setting("cut prompts to their last N tokens; null = only max_length",
                                               at_least(1))


# ------------------------------------------------------------------------------------------------ kl
KL_ESTIMATORS = ("k1", "k2", "k3", "abs", "full")


@dataclass
class KLBase(Block):
    source: ClassVar[str] = "conf/kl/"
    controller: str = setting("the controller of the coefficient (picks the settings below)")
    kl_coef: float = setting("the KL coefficient beta (kl=adaptive: its initial value)", at_least(0))
    estimator: Optional[Literal[KL_ESTIMATORS]] = setting(  # type: ignore[valid-type]
        "per-token KL estimator; null = the objective's default (k1 for PPO)")
    in_reward: Optional[bool] = setting("true: penalty in the reward; false: in the loss; null = the objective's "
                                        "default")
    track: bool = setting("measure the KL to the reference at every step (train/kl); false skips the reference "
                          "forward when the KL is not used")


@dataclass
class FixedKL(KLBase):
    """A constant KL coefficient."""


@dataclass
class AdaptiveKL(KLBase):
    """Ziegler et al. 2019: beta *= 1 + clip(KL/target - 1, -0.2, 0.2) * batch_size / horizon."""

    kl_coef: float = setting("initial coefficient (the objective's adaptive_kl_coef unless set)",
                             above(0, "the controller multiplies it: 0 would stay 0"))
    target: float = setting("target KL per sequence (nats)", above(0))
    horizon: float = setting("in samples: how fast the coefficient moves (larger = slower)", above(0))


@dataclass
class NoKL(KLBase):
    """No KL penalty; the KL is still measured (train/kl) unless track=false."""

    kl_coef: float = setting("0: no penalty (another value is refused in an online run: use kl=fixed or "
                             "kl=adaptive)", at_least(0))


# ------------------------------------------------------------------------------------------------ model
@dataclass
class Lora(Block):
    """LoRA through peft; the reference is the same network with the adapters off."""

    r: int = setting("adapter rank", at_least(0, "0 = full fine-tuning"))
    alpha: float = setting("LoRA scaling numerator (the update is scaled by alpha / r)", above(0))
    dropout: float = setting("adapter dropout; keep 0: the sampler must be the policy that is scored",
                             within(0, 1, open_hi=True))
    target_modules: Union[str, list] = setting("all-linear, or a list of module names")
    save: Literal["merged", "adapter"] = setting("merged: a full model in <run>/policy | adapter: the adapter only")


@dataclass
class Model(Block):
    """The policy (and its tokenizer)."""

    source: ClassVar[str] = "conf/model/"
    name: str = setting("the option's name (logs)")
    path: str = setting("hub id or local folder of the policy")
    tokenizer: Optional[str] = setting("hub id or folder of the tokenizer; null = the one saved with the model")
    ref_path: Optional[str] = setting("the reference policy of the KL; null = the initial policy (model.path)")
    dtype: Literal["float32", "bfloat16", "float16"] = setting("the policy's weights")
    gradient_checkpointing: bool = setting("trade compute for activation memory")
    lora: Lora = setting("LoRA adapters (r=0: off)")


# ------------------------------------------------------------------------------------------------ reward_model
INPUTS = ("prompt+completion", "completion")


@dataclass
class RewardBase(Block):
    """Keys of every reward kind. ``preset``: the ``conf/reward_model/`` option that holds the kind's defaults; a
    composite part written inline takes the keys it leaves out from it."""

    source: ClassVar[str] = "conf/reward_model/"
    preset: ClassVar[str] = ""
    name: str = setting("the reward's name in logs and error messages (a composite part: its key in parts)")
    kind: str = setting("which reward (picks the settings below)")
    timeout: Optional[float] = setting("seconds one call of this reward may take, then the run fails naming it (the "
                                       "stuck call is abandoned); null = no limit", above(0))


@dataclass
class ClassifierReward(RewardBase):
    """Any AutoModelForSequenceClassification; the reward is one label's output."""

    preset: ClassVar[str] = "distilbert_imdb"
    path: str = setting("hub id or local folder of the classifier")
    label: Union[str, int] = setting("label name or index whose output is the reward")
    output: Literal["logit", "prob", "log_prob"] = setting("which output of that label")
    input: Literal[INPUTS] = setting("what is scored")  # type: ignore[valid-type]
    batch_size: int = setting("texts per classifier forward", at_least(1))
    max_length: int = setting("classifier tokens; longer texts are truncated (see truncation_side)", at_least(1))
    truncation_side: Literal["left", "right"] = setting(
        "left: drop the beginning of long texts so the completion is always scored")
    per_token: bool = setting("per-token rewards: the change of the score as each response token is added")


@dataclass
class VaderReward(RewardBase):
    """VADER lexicon sentiment (CPU, no model); the reward is one polarity_scores entry."""

    preset: ClassVar[str] = "vader"
    field: Literal["compound", "pos", "neg", "neu"] = setting("the polarity_scores entry that is the reward")
    input: Literal[INPUTS] = setting("what is scored")  # type: ignore[valid-type]


@dataclass
class FunctionReward(RewardBase):
    """Any importable function with the signature of TRL's GRPO reward functions."""

    preset: ClassVar[str] = "function"
    fn: str = setting("module:function or module.function, or one of ours (rlhf_exp/rewards/functions.py)")
    kwargs: dict = setting("fixed keyword arguments passed on every call (add one with +reward_model.kwargs.x=...)")
    none_value: Optional[float] = setting("what a None score (not applicable) becomes; null = an error")


@dataclass
class LearnedReward(RewardBase):
    """A reward model trained with objective=reward."""

    preset: ClassVar[str] = "learned"
    path: Optional[str] = setting("the reward run's folder (its reward_model/) or that model folder; required")
    input: Literal[INPUTS] = setting(  # type: ignore[valid-type]
        "what is scored (as the reward model was trained: prompt+completion)")
    batch_size: int = setting("texts per forward", at_least(1))
    max_length: int = setting("classifier tokens; longer texts lose their beginning", at_least(1))


@dataclass
class CompositeReward(RewardBase):
    """A weighted sum of rewards: each part is any reward_model config plus a weight."""

    preset: ClassVar[str] = "composite"
    parts: dict = setting("part name -> {weight, ...a reward_model config}; null switches a part off")

    @classmethod
    def check_more(cls, block: dict, path: str) -> None:
        parts = block["parts"]
        if not any(p is not None for p in parts.values()):
            raise ConfigError(f"{path}.parts must hold at least one part, got {parts!r}.")
        for name, part in parts.items():
            where = f"{path}.parts.{name}"
            if part is None:
                continue
            if not isinstance(part, dict) or "kind" not in part:
                raise ConfigError(f"{where} must be a reward config with a kind and a weight, got {part!r}.")
            if "weight" not in part:
                raise ConfigError(f"{where}.weight is missing: every part of a composite reward has a weight "
                                  f"(0 = only logged).")
            weight = part["weight"]
            if not _type_ok(weight, float) or not math.isfinite(weight):
                raise ConfigError(f"{where}.weight must be a number, got {_describe(weight)}.")
            sub = {k: v for k, v in part.items() if k != "weight"}
            sub["name"] = str(name)
            check_kind("reward_model", complete_reward(sub), where)


# ------------------------------------------------------------------------------------------------ dataset
@dataclass
class DatasetBase(Block):
    source: ClassVar[str] = "conf/dataset/"
    name: str = setting("the option's name (messages)")
    kind: str = setting("where the data comes from (picks the settings below)")
    train_size: Optional[int] = setting("online training prompts; null = all", at_least(1))
    eval_size: int = setting("held-out prompts (online runs; the policy evaluation of offline runs)", at_least(1))
    offline_train_size: Optional[int] = setting("offline training records (pairs for reward/dpo); null = all",
                                                at_least(1))
    offline_eval_size: int = setting("held-out offline records (held-out loss, pairwise accuracy)", at_least(1))
    prompt_min_tokens: Optional[int] = setting(
        "prompts (plain-text SFT data: texts) are cut to a random prefix of prompt_min_tokens..prompt_max_tokens "
        "tokens; null = no cut", at_least(1))
    prompt_max_tokens: Optional[int] = setting("see prompt_min_tokens (set both or neither)", at_least(1))
    seed: int = setting("shuffling and prompt cuts", within(0, 2 ** 32, open_hi=True))
    chat_template: bool = setting("prompts go into the tokenizer's chat template as the user's turn")

    @classmethod
    def check_more(cls, block: dict, path: str) -> None:
        lo, hi = block["prompt_min_tokens"], block["prompt_max_tokens"]
        if (lo is None) != (hi is None):
            raise ConfigError(f"{path}.prompt_min_tokens={lo} and {path}.prompt_max_tokens={hi}: set both (prompts "
                              f"are cut to a random length between them) or neither; one alone is ignored.")
        if lo is not None and lo > hi:
            raise ConfigError(f"{path}.prompt_min_tokens ({lo}) must be <= {path}.prompt_max_tokens ({hi}).")


@dataclass
class TinyReviewsDataset(DatasetBase):
    """The embedded review generator (offline objectives: its pairs and labelled reviews)."""


RECORD_FIELDS = ("prompt", "completion", "text", "messages", "chosen", "rejected", "label", "margin")


@dataclass
class TableDataset(DatasetBase):
    """Keys of the datasets read as tables of rows (hub datasets and local files)."""

    train_split: str = setting("the split to train on")
    eval_split: Optional[str] = setting("the held-out split; null = hold out rows of the train split")
    prompt_column: Optional[str] = setting("the column of online prompts; null = none (no online runs)")
    columns: dict = setting(
        f"record field -> dataset column (fields: {', '.join(RECORD_FIELDS)}; absent = the same name, null = none)")
    prompt_delimiter: Optional[str] = setting(
        "pairs without a prompt column: the prompt is their common prefix, cut after the last one of these")
    max_prompt_tokens: Optional[int] = setting("prompts keep their last N tokens (when not cut by "
                                               "prompt_min/max_tokens); null = all", at_least(1))

    @classmethod
    def check_more(cls, block: dict, path: str) -> None:
        super().check_more(block, path)
        for key, column in block["columns"].items():
            if key not in RECORD_FIELDS:
                guess = closest(str(key), list(RECORD_FIELDS))
                raise ConfigError(f"{path}.columns.{key}: not a record field (fields: {', '.join(RECORD_FIELDS)})."
                                  + (f" Did you mean {path}.columns.{guess}?" if guess else ""))
            if column is not None and not isinstance(column, str):
                raise ConfigError(f"{path}.columns.{key} must be a column name or null, got {_describe(column)}.")


@dataclass
class HubDataset(TableDataset):
    """A Hugging Face dataset: a hub id, a `huggingface-cli download` folder or a save_to_disk folder."""

    path: str = setting("hub id, a `huggingface-cli download --local-dir` folder, or a save_to_disk folder")
    config_name: Optional[str] = setting("the hub config (subset) to load; null = the repo's default")
    data_dir: Optional[str] = setting("a sub-folder of the repo to read (load_dataset's data_dir)")


@dataclass
class FilesDataset(TableDataset):
    """Local jsonl/json/csv/parquet files."""

    path: Optional[Literal["json", "csv", "parquet"]] = setting("the datasets builder; null = from the file "
                                                                "extension")
    data_files: Union[str, list, dict, None] = setting(
        "a file (rows are held out for eval), a list, or {train: ..., test: ...}; required")


# ------------------------------------------------------------------------------------------------ logger
@dataclass
class LoggerBase(Block):
    source: ClassVar[str] = "conf/logger/"
    kind: str = setting("where metrics go (metrics.jsonl is always written)")


@dataclass
class NoLogger(LoggerBase):
    """Only the run folder's metrics.jsonl, samples.jsonl and summary.json."""


@dataclass
class TensorBoardLogger(LoggerBase):
    """TensorBoard event files in <run dir>/tensorboard."""


@dataclass
class WandbLogger(LoggerBase):
    """Weights & Biases (offline into the run folder without credentials or server)."""

    project: str = setting("W&B project")
    entity: Optional[str] = setting("W&B entity (team or user); null = the account's default")
    group: Optional[str] = setting("runs of one sweep share a group (filled in for a multirun)")
    tags: list = setting("W&B tags (the command-line overrides are added)")
    job_type: Optional[str] = setting("W&B job type")
    mode: Optional[Literal["online", "offline", "disabled"]] = setting(
        "null = online with credentials, else offline")
    init_timeout: float = setting("seconds to wait for the W&B server; unreachable = log offline, with a notice",
                                  above(0))


# ------------------------------------------------------------------------------------------------ groups
@dataclass(frozen=True)
class Group:
    """A config group: ``selector`` is the key whose value picks the block from ``kinds`` (None: one block)."""

    name: str
    selector: Optional[str]
    kinds: dict
    doc: str


GROUPS: dict[str, Group] = {
    "objective": Group("objective", "kind", {ONLINE: OnlineObjectiveBase, OFFLINE: OfflineObjectiveBase},
                       "what is optimised"),
    "kl": Group("kl", "controller", {"fixed": FixedKL, "adaptive": AdaptiveKL, "none": NoKL},
                "the KL penalty to the reference policy"),
    "model": Group("model", None, {None: Model}, "the policy"),
    "reward_model": Group("reward_model", "kind", {
        "hf_classifier": ClassifierReward, "vader": VaderReward, "function": FunctionReward,
        "learned": LearnedReward, "composite": CompositeReward}, "the task reward"),
    "dataset": Group("dataset", "kind", {"tiny_reviews": TinyReviewsDataset, "hf": HubDataset,
                                         "files": FilesDataset}, "prompts and offline records"),
    "logger": Group("logger", "kind", {"none": NoLogger, "tensorboard": TensorBoardLogger, "wandb": WandbLogger},
                    "where metrics go besides metrics.jsonl"),
}


def register_kind(group: str, kind: str, block: type) -> None:
    """Declare a new kind of a config group (a reward kind, a dataset kind...): its schema block."""
    GROUPS[group].kinds[kind] = block


# ------------------------------------------------------------------------------------------------ checking
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _describe(value) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{value!r} ({kind})"


def _type_ok(value, tp) -> bool:
    origin = get_origin(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return _is_int(value)
    if tp is float:
        return _is_number(value)
    if tp is str:
        return isinstance(value, str)
    if tp is list or origin is list:
        return isinstance(value, (list, tuple))
    if tp is dict or origin is dict or dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    if origin is Union:
        return any(_type_ok(value, a) for a in get_args(tp))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(tp))
    raise TypeError(f"schema type {tp!r} is not supported")


def type_text(tp) -> str:
    """What a value of type ``tp`` is, in words (``an integer``, ``one of a, b``, ``a number or null``)."""
    origin = get_origin(tp)
    if origin is Union:
        args = get_args(tp)
        rest = [type_text(a) for a in args if a is not type(None)]
        return " or ".join(rest + (["null"] if type(None) in args else []))
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping of settings"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", Any: "anything"}.get(tp, str(tp))


def nullable(tp) -> bool:
    return get_origin(tp) is Union and type(None) in get_args(tp)


def range_text(f: dataclasses.Field, tp) -> str:
    """``f``'s requirement as an error quotes it: ``>= 1 or null (null = keep all)``."""
    r: Range | None = f.metadata["range"]
    if r is None:
        return type_text(tp)
    base = [a for a in get_args(tp) if a is not type(None)] if nullable(tp) else [tp]
    integer = base == [int] and r.text.startswith((">", "<", "in "))
    text = ("an integer " if integer else "") + r.text + (" or null" if nullable(tp) else "")
    return f"{text} ({r.note})" if r.note else text


@functools.lru_cache(maxsize=None)
def settings_of(block: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """``key -> (field, type)`` of a schema block."""
    hints = get_type_hints(block)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(block)}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def _where(block: type, group: Optional[str]) -> str:
    """The block ``block`` is, in words: ``kl with controller=fixed``, ``conf/config.yaml's train``."""
    if group is None:
        return "conf/config.yaml"
    g = GROUPS[group]
    if not g.selector:
        return group
    kind = next((k for k, b in g.kinds.items() if b is block), "?")
    return f"{group} with {g.selector}={kind}"


def _unknown(key: str, path: str, block: type, group: Optional[str]) -> ConfigError:
    """The error for ``key``, not a setting of ``block`` at ``path``: the closest setting, or the kinds of the
    group that have it (a setting the chosen kind ignores)."""
    known = list(settings_of(block))
    guess = closest(key, known)
    hint = f" Did you mean {_join(path, guess)}?" if guess else f" Its settings: {', '.join(known)}."
    g = GROUPS.get(group) if group else None
    owners = [str(k) for k, b in g.kinds.items() if key in settings_of(b)] if g and g.selector else []
    if owners:
        hint = (f" {key} is a setting of {g.selector}={' | '.join(owners)} only: the chosen one has no use for it. "
                f"Pick an option of that kind, or drop {_join(path, key)}.")
    return ConfigError(f"Unknown config key {_join(path, key)!r}: {_where(block, group)} has no such setting.{hint}")


def check_block(block: Any, schema: type, path: str, group: Optional[str] = None) -> None:
    """Raise a :class:`ConfigError` naming the key, the value and the valid range for the first setting of
    ``block`` (a resolved plain dict at ``path``) that ``schema`` does not accept: unknown keys (with the closest
    known one), missing keys, wrong types, values out of range; then the block's own ``check_more``."""
    if not isinstance(block, dict):
        raise ConfigError(f"{path} must be a mapping of settings, got {_describe(block)}.")
    settings = settings_of(schema)
    if not schema.open_keys:
        for key in block:
            if key not in settings:
                raise _unknown(str(key), path, schema, group)
    for key, (f, tp) in settings.items():
        if key not in block:
            if f.metadata["absent_ok"]:
                continue
            raise ConfigError(f"{_join(path, key)} is missing ({_where(schema, group)} needs it: "
                              f"{f.metadata['doc']}).")
        value = block[key]
        if not _type_ok(value, tp):
            r = f.metadata["range"]
            what = range_text(f, tp) if get_origin(tp) is not Union and tp is list and r else type_text(tp)
            raise ConfigError(f"{_join(path, key)} must be {what}, got {_describe(value)}.")
        if dataclasses.is_dataclass(tp):
            check_block(value, tp, _join(path, key), group)
            continue
        r = f.metadata["range"]
        if r is not None and value is not None:
            try:
                ok = bool(r.ok(value))
            except (TypeError, ValueError):
                ok = False
            finite = not _is_number(value) or math.isfinite(value)
            if not ok or not finite:
                what = range_text(f, tp) if finite else f"a finite number {range_text(f, tp)}"
                raise ConfigError(f"{_join(path, key)} must be {what}, got {value!r}.")
    schema.check_more(block, path)


def block_for(group: str, block: Any, path: Optional[str] = None) -> type:
    """The schema block of ``block`` (a resolved dict of config group ``group``) by its selector."""
    g, path = GROUPS[group], path or group
    if g.selector is None:
        return g.kinds[None]
    if not isinstance(block, dict):
        raise ConfigError(f"{path} must be a mapping of settings, got {_describe(block)}.")
    if g.selector not in block:
        raise ConfigError(f"{path}.{g.selector} is missing: it picks what the block is "
                          f"({', '.join(map(str, g.kinds))}).")
    kind = block[g.selector]
    if kind not in g.kinds:
        guess = closest(str(kind), [str(k) for k in g.kinds])
        raise ConfigError(f"{path}.{g.selector} must be one of {', '.join(map(str, g.kinds))}, got {kind!r}."
                          + (f" Did you mean {guess}?" if guess else ""))
    return g.kinds[kind]


def check_kind(group: str, block: Any, path: Optional[str] = None) -> None:
    """Check ``block`` against the schema of its kind in config group ``group``."""
    check_block(block, block_for(group, block, path), path or group, group)


# ------------------------------------------------------------------------------------------------ reward presets
@functools.lru_cache(maxsize=None)
def _preset(name: str):
    from omegaconf import OmegaConf

    return OmegaConf.load(CONFIG_DIR / "reward_model" / f"{name}.yaml")


def complete_reward(cfg: Any) -> dict:
    """A reward config with the keys it leaves out taken from its kind's preset (``conf/reward_model/<preset>``):
    what a composite part written inline (``+reward_model.parts.fmt={kind: function, fn: regex_match,
    weight: 0.5}``) runs with. Keys it gives are kept as they are (not merged into); a kind without a schema is
    returned unchanged."""
    from omegaconf import OmegaConf

    given = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    block = GROUPS["reward_model"].kinds.get(given.get("kind"))
    if block is None or not block.preset:
        return given
    preset = _preset(block.preset)
    out = dict(given)
    for key in settings_of(block):
        if key not in out and key in preset:
            value = preset[key]
            out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out
