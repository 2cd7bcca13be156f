"""Rollout hooks: what an objective adds to the online loop's rollout, by name (``rollout_hooks:`` in its yaml).

The loop's step is the same for every objective: draw prompts, ``objective.collect`` (a rollout; a hook may take
over), preprocess the rewards, ``objective.complete`` (a hook may add to the batch), advantages, updates. A hook
gets what it may use from the loop in a :class:`RolloutContext` and nothing else.

* ``dynamic_sampling`` (DAPO, Yu et al., 2025; settings ``objective.dynamic_sampling.{enable, max_tries}``): drop the
  prompt groups whose rewards are all equal and roll out fresh prompts until the batch is full
  (:mod:`rlhf_exp.objectives.dynamic_sampling`).
* ``greedy_baseline`` (ReMax, Li et al., 2023): decode one greedy response per prompt and add its task reward, as
  ``batch["baseline_scores"]`` ``(B,)``, for the ``greedy_baseline`` estimator.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Optional

import torch

from rlhf_exp.core.masked import Reduce
from rlhf_exp.core.registry import Param, read_params
from rlhf_exp.objectives import dynamic_sampling as ds


@dataclass
class Rollout:
    """One step's rollout: this process's ``prompts`` (each repeated ``group_size`` times) and response ``lengths``,
    the scored ``batch`` (see :mod:`rlhf_exp.objectives.base`), the collector's ``info`` (texts, reward extras,
    timings, ``ends_with_eos``) and ``stats`` to log (``train/<name>``)."""

    prompts: list
    lengths: torch.Tensor
    batch: dict[str, torch.Tensor]
    info: dict[str, Any]
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutContext:
    """What the online loop lends a rollout hook for one step.

    ``rollout(prompts, lengths) -> (batch, info)``: the step's own rollout (the training sampler, the reference
    pass as the KL settings need it); ``generate(prompts, lengths, sampling, score_with_ref=, entropy=)``: a rollout
    under other sampling settings; ``draw_prompts() -> (prompts, lengths)``: more prompts of the training
    distribution (each rank its share); ``sampling``: the training sampler's settings; ``preprocess(raw, token_scores,
    mask) -> (scores, token_scores)``: the loop's reward preprocessing with its current running moments (not
    updating them); ``local_batch``: sequences per process; ``pad_id``; ``device``; ``reduce`` (a sum over processes,
    or None)."""

    rollout: Callable[..., tuple[dict[str, torch.Tensor], dict[str, Any]]]
    generate: Callable[..., tuple[dict[str, torch.Tensor], dict[str, Any]]]
    draw_prompts: Callable[[], tuple[list, torch.Tensor]]
    sampling: Any
    preprocess: Callable[..., tuple[torch.Tensor, Optional[torch.Tensor]]]
    local_batch: int
    pad_id: int
    device: torch.device
    reduce: Reduce


class RolloutHook:
    """A hook: its settings block in the objective (``block``, with ``params``), the batch keys it adds
    (``provides``), whether the rollout must be scored by the policy before the update (``needs_policy_scores``:
    no taking the old log-probs from the update's forward), and its two calls."""

    name = "base"
    block: Optional[str] = None
    params: tuple[Param, ...] = ()
    provides: tuple[str, ...] = ()

    def __init__(self, settings: SimpleNamespace, group_size: int):
        self.settings, self.group_size = settings, group_size

    @property
    def active(self) -> bool:
        return True

    @property
    def needs_policy_scores(self) -> bool:
        return False

    @classmethod
    def problem(cls, settings: SimpleNamespace, group_size: int) -> Optional[str]:
        """What makes these settings unusable with this group size (None: nothing)."""
        return None

    def collect(self, ctx: RolloutContext, prompts: list, lengths: torch.Tensor) -> Optional[Rollout]:
        """Gather the step's rollout instead of the plain one (None: leave it to the loop)."""
        return None

    def complete(self, ctx: RolloutContext, rollout: Rollout) -> dict[str, float]:
        """After the rewards are preprocessed (``batch["scores"]``): add to the batch; return stats to log."""
        return {}


class GreedyBaseline(RolloutHook):
    """ReMax's baseline: the task reward of the greedy response to each prompt (the same length limit as the sampled
    one), preprocessed with the current reward moments (not updating them): ``batch["baseline_scores"]`` ``(B,)``."""

    name = "greedy_baseline"
    provides = ("baseline_scores",)

    def complete(self, ctx: RolloutContext, rollout: Rollout) -> dict[str, float]:
        base, _ = ctx.generate(rollout.prompts, rollout.lengths, dataclasses.replace(ctx.sampling, do_sample=False),
                               score_with_ref=False, entropy=False)
        mask = base["response_mask"].float()
        scores, ts = ctx.preprocess(base["raw_scores"], base.get("token_scores"), mask)
        rollout.batch["baseline_scores"] = scores if ts is None else (ts * mask).sum(dim=1)
        return {"greedy_reward_mean": float(rollout.batch["baseline_scores"].mean())}


class DynamicSampling(RolloutHook):
    """DAPO's dynamic sampling: roll out, drop the groups whose raw rewards are all equal, roll out fresh prompts
    until the per-process batch is full or ``max_tries`` rounds were generated (all processes take the same number
    of rounds), then fill any shortfall with dropped groups. Logs ``dynamic_sampling/{dropped_groups, tries,
    filled_groups}``."""

    name = "dynamic_sampling"
    block = "dynamic_sampling"
    params = (Param("enable", bool, "drop the groups whose rewards are all equal and refill the batch"),
              Param("max_tries", int, "generation rounds per step at most; then the batch is filled with dropped "
                    "groups", ">= 1", lambda v: v >= 1))

    @property
    def active(self) -> bool:
        return bool(self.settings.enable)

    @property
    def needs_policy_scores(self) -> bool:
        return self.active

    @classmethod
    def problem(cls, settings: SimpleNamespace, group_size: int) -> Optional[str]:
        if settings.enable and group_size < 2:
            return (f"objective.dynamic_sampling.enable=true needs objective.group_size >= 2 (it drops the groups of "
                    f"completions of one prompt whose rewards are all equal), got {group_size}")
        return None

    def collect(self, ctx: RolloutContext, prompts: list, lengths: torch.Tensor) -> Optional[Rollout]:
        if not self.active:
            return None
        G = self.group_size
        need = ctx.local_batch // G
        batches, infos, all_prompts, all_lengths = [], [], [], []
        kept: list[int] = []
        dropped: list[int] = []
        tries = 0
        while True:
            batch, info = ctx.rollout(prompts, lengths)
            offset = sum(len(p) for p in all_prompts) // G
            ok = ds.varied_groups(batch["raw_scores"], G).cpu()
            kept += [offset + i for i in range(len(ok)) if ok[i]]
            dropped += [offset + i for i in range(len(ok)) if not ok[i]]
            batches.append(batch)
            infos.append(info)
            all_prompts.append(prompts)
            all_lengths.append(lengths)
            tries += 1
            short = torch.tensor(float(len(kept) < need), device=ctx.device)
            if ctx.reduce is not None:
                short = ctx.reduce(short)
            if float(short) == 0 or tries >= self.settings.max_tries:
                break
            prompts, lengths = ctx.draw_prompts()
        filled = max(0, need - len(kept))
        groups = torch.tensor((kept + dropped[:filled])[:need])
        rows = ds.group_rows(groups, G)
        batch = ds.select_rows(ds.concat_rollouts(batches, ctx.pad_id), rows)
        flat_prompts = [p for ps in all_prompts for p in ps]
        device = ctx.device
        info = {"prompts": [info_p for i in infos for info_p in i["prompts"]],
                "completions": [c for i in infos for c in i["completions"]],
                "ends_with_eos": torch.cat([i["ends_with_eos"].to(device) for i in infos]),
                "extras": {k: torch.cat([i["extras"][k].to(device) for i in infos]) for k in infos[0]["extras"]},
                "gen_s": sum(i["gen_s"] for i in infos), "score_s": sum(i["score_s"] for i in infos)}
        r = rows.tolist()
        info.update(prompts=[info["prompts"][i] for i in r], completions=[info["completions"][i] for i in r],
                    ends_with_eos=info["ends_with_eos"][rows.to(device)],
                    extras={k: v[rows.to(v.device)] for k, v in info["extras"].items()})
        stats = {"dynamic_sampling/dropped_groups": float(len(dropped)), "dynamic_sampling/tries": float(tries),
                 "dynamic_sampling/filled_groups": float(filled)}
        return Rollout([flat_prompts[i] for i in r], torch.cat(all_lengths)[rows], batch, info, stats)


ROLLOUT_HOOKS: dict[str, type[RolloutHook]] = {h.name: h for h in (GreedyBaseline, DynamicSampling)}


def build_hook(name: str, block: Mapping[str, Any], group_size: int) -> RolloutHook:
    """The hook ``name`` with its settings read from the objective block (already validated)."""
    cls = ROLLOUT_HOOKS[name]
    settings = read_params(cls.params, block[cls.block]) if cls.block else SimpleNamespace()
    return cls(settings, group_size)
