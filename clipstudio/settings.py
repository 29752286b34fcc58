"""What every settings dataclass shares (GenerateConfig, DiffuseConfig, AnimateConfig, the trainers' configs):
the differences from its defaults (what a recipe holds), every setting (what an output records), and a checked
copy with changes. Each class keeps its own ``from_dict``, where its types and migrations live."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, TypeVar

from .errors import ClipstudioError

T = TypeVar("T", bound="Settings")


class Settings:
    """Mixin for ``@dataclass`` settings whose every field has a default."""

    def to_dict(self) -> dict[str, Any]:
        """Only the settings that differ from the defaults."""
        defaults = type(self)()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(defaults, f.name)}

    def to_full_dict(self) -> dict[str, Any]:
        """Every setting, defaults included (what an output records)."""
        return dataclasses.asdict(self)

    def replace(self: T, **changes: Any) -> T:
        """A copy with some settings changed, built by ``from_dict`` (so unknown names and bad types are errors)."""
        return type(self).from_dict({**self.to_full_dict(), **changes})

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """The settings of a mapping; unknown names are one line of error (subclasses add their coercions)."""
        cls.reject_unknown(data)
        return cls(**data)

    @classmethod
    def reject_unknown(cls, names: Iterable[str], what: str = "") -> None:
        """One line of error naming every key that is not a setting of ``cls``."""
        unknown = sorted(set(names) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ClipstudioError(f"unknown {what + ' ' if what else ''}setting(s): {', '.join(unknown)}")
