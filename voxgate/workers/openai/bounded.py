"""A size-capped map for the translator's id bookkeeping (responses, items, calls, transcripts),
so a long session cannot grow the translator's memory without end."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["Bounded"]


class Bounded:
    """An insertion-ordered map that forgets its oldest entries past `limit`."""

    __slots__ = ("_data", "_limit")

    def __init__(self, limit: int) -> None:
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._limit = limit

    def __contains__(self, key: Any) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Any, default: Any = None) -> Any:
        return self._data.get(key, default)

    def pop(self, key: Any, default: Any = None) -> Any:
        return self._data.pop(key, default)

    def set(self, key: Any, value: Any = True) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self._limit:
            self._data.popitem(last=False)

    add = set
