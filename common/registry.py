"""One registry per component: a name maps to its config schema and its builder.

Validation (is this name known? which schema checks its keys?) and building read the same
table, so a name cannot be accepted by one and unknown to the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    name: str
    schema: type | None
    builder: Callable[..., Any]


class Registry:
    """Names of one component kind (e.g. "model"), each with a schema and a builder.

    `key` is the config key that selects the name (e.g. "model.name"), so an unknown name
    fails with an error that names the key and lists the known names.
    """

    def __init__(self, kind: str, *, key: str):
        self.kind, self.key = kind, key
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, builder: Callable[..., Any], schema: type | None = None):
        assert name not in self._entries, f"{self.kind} {name!r} registered twice"
        self._entries[name] = Entry(name=name, schema=schema, builder=builder)

    def __call__(self, name: str, *, schema: type | None = None):
        """Decorator form: `@MODELS("resnet50")` over the builder."""
        def decorate(builder):
            self.register(name, builder=builder, schema=schema)
            return builder
        return decorate

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise ValueError(f"{self.key}: unknown {self.kind} {name!r}; known: "
                             f"{', '.join(self.names)}")
        return self._entries[name]

    def build(self, name: str, **kwargs):
        return self.get(name).builder(**kwargs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
