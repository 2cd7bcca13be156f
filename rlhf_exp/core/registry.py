"""Registries of pure functions by name, each entry declaring the config parameters it reads.

The advantage estimators (:data:`rlhf_exp.core.advantages.ADV_ESTIMATORS`) and the policy losses
(:data:`rlhf_exp.core.losses.POLICY_LOSSES`) are registries: an online objective names one of each in its yaml
(``estimator: group_normalized``, ``policy_loss: clipped_token``) and sets the parameters they declare. A
:class:`Param` is a parameter's name, type, valid range and one-line doc; the objective block is validated against
the declarations before anything loads (:func:`rlhf_exp.objectives.validate_objective`). The default values live in
the yaml files only.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Generic, Iterator, Mapping, Optional, Sequence, TypeVar

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


@dataclass(frozen=True)
class Param:
    """One config parameter a registered function reads from the objective block.

    ``kind``: ``bool``, ``int``, ``float``, ``str`` or ``list``. ``check``/``range``: a test of a value of that type
    and its wording (``"> 0"``); ``choices``: the valid strings. ``nullable``: ``null`` is a valid value (meaning what
    ``doc`` says). ``aliases``: other names the same parameter has in some objectives' yaml (``clip_low`` for
    ``cliprange``); an objective sets exactly one of them. ``optional``: the key may be absent (a setting read by
    another config group through ``oc.select`` with its own fallback)."""

    name: str
    kind: type
    doc: str
    range: str = ""
    check: Optional[Callable[[Any], bool]] = None
    choices: tuple = ()
    nullable: bool = False
    aliases: tuple[str, ...] = ()
    optional: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,) + self.aliases

    def requirement(self) -> str:
        """What a valid value is, in words: ``a number > 0 or null``."""
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            text = _TYPE_NAMES[self.kind] + (f" {self.range}" if self.range else "")
        return text + (" or null" if self.nullable else "")

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` is not valid for this parameter (None when it is)."""
        if value is None:
            return None if self.nullable else f"must be {self.requirement()}, got null"
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif self.kind is list:
            ok = isinstance(value, (list, tuple))
        else:
            ok = isinstance(value, self.kind)
        if ok and self.choices:
            ok = value in self.choices
        if ok and self.check is not None:
            ok = bool(self.check(value))
        return None if ok else f"must be {self.requirement()}, got {value!r}"


def read_params(params: Sequence[Param], block: Mapping[str, Any]) -> SimpleNamespace:
    """The values of ``params`` from an objective block (already validated), by canonical name; a float parameter
    given as an integer (``cliprange: 1``) is read as a float."""
    out = {}
    for p in params:
        key = next((n for n in p.names if n in block), None)
        value = None if key is None else block[key]
        if p.kind is float and value is not None:
            value = float(value)
        out[p.name] = value
    return SimpleNamespace(**out)


E = TypeVar("E")


class Registry(Generic[E]):
    """Functions by name. ``@registry.register(name, params=(...), **declarations)`` adds one as an ``entry_type``
    (a dataclass with the fields ``name``, ``fn``, ``params``, ``doc`` and the registry's own declarations);
    ``registry[name]`` is its entry; an unknown name is a ``KeyError`` listing the registered ones."""

    def __init__(self, what: str, entry_type: type):
        self.what, self.entry_type = what, entry_type
        self._entries: dict[str, E] = {}

    def register(self, name: str, params: Sequence[Param] = (), **declarations: Any) -> Callable:
        def add(fn):
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            doc = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
            self._entries[name] = self.entry_type(name=name, fn=fn, params=tuple(params), doc=doc, **declarations)
            return fn
        return add

    def __getitem__(self, name: str) -> E:
        if name not in self._entries:
            raise KeyError(f"unknown {self.what} {name!r}; registered: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)
