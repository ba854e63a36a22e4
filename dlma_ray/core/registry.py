"""A registry of decorated classes by name (the training methods, the judges): one instance per class, listed by
each class's `order`, an unknown name refused with every known one."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, error: type[Exception]):
        self.kind, self.error = kind, error  # e.g. "method", ConfigError: what `get` raises for an unknown name
        self.items: dict[str, T] = {}

    def add(self, cls: type) -> type:
        """Register ``cls`` under its `name` (an instance of it); the same name twice for two classes is an error."""
        name = getattr(cls, "name", None)
        if not name:
            raise TypeError(f"{cls.__name__} needs a class attribute `name`")
        if name in self.items and type(self.items[name]) is not cls:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({type(self.items[name]).__name__}, "
                             f"{cls.__name__})")
        self.items[name] = cls()
        return cls

    def remove(self, name: str) -> None:
        self.items.pop(name, None)

    def names(self, **where: Any) -> list[str]:
        """The names in listing order (`order`, then name); ``where``: attributes the instances must have."""
        found = [i for i in self.items.values() if all(getattr(i, k) == v for k, v in where.items())]
        return [i.name for i in sorted(found, key=lambda i: (i.order, i.name))]

    def get(self, name: str, field: str) -> T:
        """The instance called ``name``; an unknown one raises ``error`` naming ``field`` and every known name."""
        if name not in self.items:
            raise self.error(f"{field}: {name!r} is not a {self.kind}; expected one of {', '.join(self.names())}")
        return self.items[name]
