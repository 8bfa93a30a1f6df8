"""Which names use which registered memory range, so a range is released after its last user.

Tied weights and views share ranges, and re-registering a name moves it to a new range; both
transports register memory per range, not per name.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class RangeUsers(Generic[K]):
    """name -> range key, and a use count per key; `release(key)` runs when a count drops to 0."""

    def __init__(self, release: Callable[[K], None]) -> None:
        self._release = release
        self._key_of: dict[str, K | None] = {}
        self._count: dict[K, int] = {}

    def in_use(self, key: K) -> bool:
        return self._count.get(key, 0) > 0

    def keys(self) -> list[K]:
        return list(self._count)

    def names(self) -> list[str]:
        return list(self._key_of)

    def use(self, name: str, key: K | None) -> None:
        """`name` now uses `key` (None: no memory, e.g. a zero-byte tensor); its old range is dropped."""
        if key is not None:
            self._count[key] = self._count.get(key, 0) + 1
        had = name in self._key_of
        old = self._key_of.get(name)
        self._key_of[name] = key
        if had:  # after the new reference, so moving a name within one range never releases it
            self._drop(old)

    def forget(self, name: str) -> None:
        """`name` no longer uses its range (unknown names are ignored)."""
        if name in self._key_of:
            self._drop(self._key_of.pop(name))

    def _drop(self, key: K | None) -> None:
        if key is None:
            return
        self._count[key] -= 1
        if self._count[key] == 0:
            del self._count[key]
            self._release(key)
