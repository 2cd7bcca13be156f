"""Any importable Python function as the reward, with the calling convention of TRL's GRPO reward functions.

A TRL reward function is called as ``f(prompts=..., completions=..., completion_ids=..., **dataset_columns,
trainer_state=..., log_extra=..., log_metric=...)`` and returns one float (or ``None``) per completion; see
``GRPOTrainer._calculate_rewards`` in trl 1.16. We call it the same way with what we have:

* ``prompts`` (list[str]), ``completions`` (list[str]; plain text, not chat messages), ``completion_ids``
  (list[list[int]], the policy's response tokens, EOS included once when sampled);
* every dataset column except the prompt column (``label`` for ``dataset=tiny_reviews``), one value per completion;
* ``log_metric(name, value)``: the value (averaged over calls in one batch) is logged as ``train/reward/<name>`` /
  ``eval/reward/<name>`` (inside a composite: ``<part>/<name>``);
* ``log_extra(column, values)``: numeric columns with one value per completion are logged the same way (as their
  mean); other columns are not shown (a warning says so once);
* the ``kwargs`` of the reward's config (``reward_model.kwargs.target=20``).

``trainer_state`` and ``environments`` are not passed (there is no ``transformers.Trainer`` here). A function that
does not take ``**kwargs`` is given only the arguments it names; a required argument that is not available fails at
the first batch with a message that lists what is available.

``None`` ("not applicable" in TRL) is not a number the loop can train on. With ``none_value`` unset (the default)
a ``None`` score raises an error that names the reward and the indices; with ``none_value: 0.0`` each ``None`` is
replaced by that number (0.0 is what TRL's weighted sum of several reward functions does with it) and the share of
replaced entries is logged as the extra ``none_frac``. Unlike TRL, a completion for which every reward says ``None``
still gets this substituted reward (TRL drops it from the update).
"""
from __future__ import annotations

import asyncio
import importlib
import inspect
import numbers
import warnings
from collections import defaultdict
from typing import Any, Callable, Optional, Sequence

from rlhf_exp.rewards.base import RewardError, RewardModel, RewardOutput

BUILTIN_MODULE = "rlhf_exp.rewards.functions"


def resolve_callable(spec: str, option: str = "reward_model.fn") -> Callable:
    """Import ``pkg.mod:func`` or ``pkg.mod.func`` (``pkg.mod:Class.method`` too); a bare name is one of ours.

    A bare name (no dot, no colon) is looked up in :mod:`rlhf_exp.rewards.functions` (``target_length``,
    ``repetition_penalty``, ``regex_match``). Errors say which part of the path failed and what to do.
    """
    spec = str(spec).strip()
    if not spec:
        raise ValueError(f"{option} is empty: set it to an importable function, e.g. {option}=mypkg.rewards:my_reward "
                         f"or one of ours, {option}=target_length.")
    if ":" in spec:
        module_name, attr_path = spec.split(":", 1)
        module = _import(module_name, spec, option)
    elif "." not in spec:
        module_name, attr_path = BUILTIN_MODULE, spec
        module = _import(module_name, spec, option)
    else:
        parts = spec.split(".")
        module = None
        for i in range(len(parts) - 1, 0, -1):
            module_name, attr_path = ".".join(parts[:i]), ".".join(parts[i:])
            try:
                module = importlib.import_module(module_name)
                break
            except ModuleNotFoundError as e:
                # keep trying shorter prefixes only when it is this very module that is missing
                if e.name is None or not module_name.startswith(e.name):
                    raise
        if module is None:
            raise ValueError(f"{option}={spec!r}: cannot import module {parts[0]!r}. Install the package that holds "
                             f"the function (pip install -e .) or run from the folder that contains it (Hydra does not "
                             f"change the working directory).")
    obj: Any = module
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            names = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise ValueError(f"{option}={spec!r}: module {module_name!r} has no attribute {attr_path!r}. Callables "
                             f"there: {', '.join(names) or '(none)'}.")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ValueError(f"{option}={spec!r} is a {type(obj).__name__}, not a function.")
    return obj


def _import(module_name: str, spec: str, option: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            raise ValueError(f"{option}={spec!r}: cannot import module {module_name!r} (no module named {e.name!r}). "
                             f"Install the package that holds "
                             f"the function (pip install -e .) or run from the folder that contains it (Hydra does "
                             f"not change the working directory).") from e
        raise


class FunctionReward(RewardModel):
    """A TRL-style reward function ``f(prompts, completions, completion_ids, **columns) -> list[float | None]``.

    Args:
        fn: the callable, or its import path (see :func:`resolve_callable`).
        kwargs: fixed keyword arguments from the config, passed on every call.
        none_value: what a ``None`` score becomes; ``None`` (default) = raise an error. See the module docstring.
        option: the config prefix, for error messages (``reward_model`` or ``reward_model.parts.<name>``).
    """

    def __init__(self, fn: str | Callable, kwargs: Optional[dict] = None, name: Optional[str] = None,
                 none_value: Optional[float] = None, option: str = "reward_model"):
        self.option = option
        self.fn = resolve_callable(fn, f"{option}.fn") if isinstance(fn, str) else fn
        self.fn_name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        self.name = name or getattr(self.fn, "__name__", "function")
        self.kwargs = dict(kwargs or {})
        self.none_value = None if none_value is None else float(none_value)
        try:
            self.signature: Optional[inspect.Signature] = inspect.signature(self.fn)
        except (TypeError, ValueError):  # some builtins and C callables have none
            self.signature = None
        self._warned: set[str] = set()

    def _select(self, available: dict[str, Any]) -> dict[str, Any]:
        """The arguments to pass: all of them when the function takes ``**kwargs``, else only those it names."""
        if self.signature is None:
            return available
        params = self.signature.parameters
        takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        chosen = available if takes_var_kw else {k: v for k, v in available.items() if k in params}
        missing = [p.name for p in params.values() if p.default is inspect.Parameter.empty
                   and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                   and p.name not in chosen]
        positional_only = [p.name for p in params.values() if p.kind is inspect.Parameter.POSITIONAL_ONLY
                           and p.default is inspect.Parameter.empty]
        if missing or positional_only:
            hint = (" trainer_state is a transformers TrainerState that TRL passes; rlhf_exp has none, so give the "
                    "parameter a default." if "trainer_state" in missing else "")
            raise RewardError(
                f"Reward {self.name!r} ({self.fn_name}) needs argument(s) {', '.join(missing + positional_only)} that "
                f"it is not given (positional-only parameters cannot be passed). It is called with keyword arguments: "
                f"{', '.join(sorted(available))} (prompts, completions, completion_ids, log_metric, log_extra, the "
                f"dataset columns and {self.option}.kwargs).{hint}")
        return chosen

    def score(self, prompts: Sequence[str], completions: Sequence[str], completion_ids: Any = None,
              **columns: Any) -> RewardOutput:
        n = len(completions)
        metrics: dict[str, list[float]] = defaultdict(list)
        extra_cols: dict[str, list] = {}

        def log_metric(name: str, value: float) -> None:
            metrics[str(name)].append(float(value))

        def log_extra(column: str, values: list) -> None:
            values = list(values)
            if len(values) == n and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
                extra_cols[str(column)] = values
            elif column not in self._warned:
                self._warned.add(column)
                warnings.warn(f"Reward {self.name!r} logged the column {column!r} with log_extra; only numeric columns "
                              f"with one value per completion are logged (as their mean), so it is not shown.")

        available: dict[str, Any] = {"prompts": list(prompts), "completions": list(completions),
                                     "completion_ids": completion_ids, "log_metric": log_metric,
                                     "log_extra": log_extra}
        clash = sorted(set(columns) & set(available))
        if clash:
            raise RewardError(f"Reward {self.name!r}: dataset column(s) {clash} clash with the reward function's own "
                              f"arguments; rename them in the dataset.")
        available.update(columns)
        clash = sorted(set(self.kwargs) & set(available))
        if clash:
            raise RewardError(f"Reward {self.name!r}: {self.option}.kwargs {clash} clash with arguments the loop "
                              f"passes (the dataset columns or prompts/completions/completion_ids); rename them.")
        available.update(self.kwargs)
        out = self.fn(**self._select(available))
        if inspect.isawaitable(out):
            out = asyncio.run(out)
        out = self._replace_none(out, n)
        extras: dict[str, Any] = {k: [sum(v) / len(v)] * n for k, v in metrics.items()}
        extras.update(extra_cols)
        if self.none_value is not None:
            extras["none_frac"] = out[1]
        return RewardOutput(scores=out[0], extras=extras)

    def _replace_none(self, values: Any, n: int) -> tuple[Any, list[float]]:
        """``(values with None replaced, (n,) 1.0 where a None was replaced)``; raises when ``none_value`` is unset."""
        try:
            seq = list(values)
        except TypeError:
            return values, [0.0] * n  # to_score_tensor reports the type
        is_none = [v is None for v in seq]
        if not any(is_none):
            return values, [0.0] * n
        if self.none_value is None:
            idx = [i for i, b in enumerate(is_none) if b]
            raise RewardError(
                f"Reward {self.name!r} returned None (TRL's 'not applicable') at indices {idx[:10]}"
                f"{' ...' if len(idx) > 10 else ''} of {len(seq)}. Every completion needs a number to train on: set "
                f"{self.option}.none_value=0.0 (what TRL's weighted sum of reward functions does with None) or another "
                f"value, or return a number.")
        return [self.none_value if b else v for v, b in zip(seq, is_none)], [float(b) for b in is_none]
