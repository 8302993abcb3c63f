"""Small name -> component registries, so configs can name models, losses, schedules and augmentations."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, Optional, TypeVar

from segkit.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of builders. ``@REG.register("name")`` adds one; ``REG.get("name")`` fetches it.

    ``fill``: a function that registers the entries on first use, for tables read from a library that is slow to
    import (smp's architectures), so that importing the module holding the registry stays cheap."""

    def __init__(self, kind: str, fill: Optional[Callable[["Registry[T]"], None]] = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._fill = fill

    @property
    def items(self) -> dict[str, T]:
        if self._fill is not None:
            fill, self._fill = self._fill, None
            fill(self)
        return self._items

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
            return self.items[name.lower()]
        except KeyError:
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r}; known: {', '.join(sorted(self.items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self.items)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self.items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
