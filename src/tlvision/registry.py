"""Registries: a backbone, a strategy or an export format is one module that registers itself.

Each registry names a package of built-in entries (say `tlvision.models.backbones`); the first
lookup imports every module of that package, and each module calls `register` for what it
defines. So a new built-in is one new file in that folder, and code outside tlvision (a test, a
notebook, a plug-in) registers its own entries the same way, touching no tlvision file.

Imports no torch: the command line lists names without loading a network.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Generic, TypeVar

from tlvision.errors import UserError

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Entries of one kind by name, in the order they were registered."""

    def __init__(self, kind: str, builtins: str) -> None:
        self.kind = kind  # what an entry is, for messages: "backbone", "strategy", ...
        self.builtins = builtins  # the package whose modules register the built-in entries
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, entry: Entry) -> Entry:
        """Add `entry` under `name`; registering a name twice is a mistake, not an override."""
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (what a test registered, say); unknown names are ignored."""
        self._entries.pop(name, None)

    def _load_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.builtins)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.builtins}.{module.name}")

    def get(self, name: str) -> Entry:
        """The entry named `name`, or a UserError that lists the names there are."""
        self._load_builtins()
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self)}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load_builtins()
        return list(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries
