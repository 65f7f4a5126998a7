"""Read-only settings values: :class:`Frozen` mappings (nested ones frozen too, lists as
tuples) and :func:`thaw`, which gives the plain JSON-able value back for records and hashes.
The settings (audiopetl.core.settings) are built of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


class Frozen(Mapping[str, Any]):
    """A read-only mapping (nested mappings frozen too, lists as tuples). :func:`thaw` gives the
    plain JSON-able value back, for records and hashes."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_data", {str(k): freeze(v) for k, v in (data or {}).items()})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Frozen settings cannot change")

    def __repr__(self) -> str:
        return f"Frozen({thaw(self)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return thaw(self) == thaw(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(repr(self))

    def __reduce__(self) -> tuple[Any, ...]:  # pickle and deepcopy (no setattr on restore)
        return (Frozen, (thaw(self),))


def freeze(value: Any) -> Any:
    if isinstance(value, Frozen):
        return value
    if isinstance(value, Mapping):
        return Frozen(value)
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The plain value: dicts and lists, as the configuration holds them."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: thaw(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    return value
