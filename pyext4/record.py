"""Record bases for value classes: equality, hashing, repr and immutability from ``__slots__``.

What a dataclass would give, without its import-time cost (each @dataclass generates its
methods with exec(): 0.35-0.66 ms of every CLI start).  A subclass lists its fields in
``__slots__`` (in ``__init__`` order) and writes its own ``__init__``; ``_compare`` may
narrow the fields that equality and hashing look at.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, ClassVar

fill = object.__setattr__  # how a FrozenRecord's __init__ sets its fields


class Record:
    """Mutable: equal to a record of the same class with equal fields, unhashable,
    ``Name(field=value, ...)`` as its repr."""

    __slots__: tuple[str, ...] = ()
    _compare: ClassVar[tuple[str, ...]] = ()  # the fields equality looks at (default: every slot)
    _key: ClassVar[Any]  # staticmethod: record -> tuple of the compared fields

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = cls.__dict__.get("_compare") or cls.__slots__
        if not fields:  # FrozenRecord itself
            return
        get = attrgetter(*fields)
        cls._key = staticmethod(get if len(fields) > 1 else lambda obj: (get(obj),))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._key(self) == self._key(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__qualname__}({fields})"


class FrozenRecord(Record):
    """Immutable (assigning or deleting a field raises AttributeError), hashable by the compared
    fields, picklable; ``__init__`` sets the fields with ``fill(self, name, value)``."""

    __slots__: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(self._key(self))

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return type(self), tuple(getattr(self, name) for name in self.__slots__)
