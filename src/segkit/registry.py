"""Small name -> component registries, so configs can name models, losses, schedules and augmentations."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from segkit.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of builders. ``@REG.register("name")`` adds one; ``REG.get("name")`` fetches it."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def add(obj: T) -> T:
            key = (name or getattr(obj, "__name__")).lower()
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._items[key] = obj
            return obj

        return add

    def get(self, name: str, key: str | None = None) -> T:
        """Fetch by name; ``key`` is the config key that named it, for the error message."""
        try:
            return self._items[name.lower()]
        except KeyError:
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
