"""What every tracker backend does, and the registry that finds one by its config name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from audiopetl.core.tracking import TrackingSettings

_REGISTRY: dict[str, type[Tracker]] = {}


class Tracker(ABC):
    """One backend's view of one run. ``folder`` is where it may keep files (the run's
    tracking folder); ``resume_id`` the id it returned when the run started, when this process
    resumes it. Values arrive flat: metric names like ``train/loss``, floats, strings."""

    name: ClassVar[str]

    def __init__(self, settings: TrackingSettings, folder: Path) -> None:
        self.settings = settings
        self.folder = folder

    @abstractmethod
    def start(self, resume_id: str | None, params: Mapping[str, str]) -> str | None:
        """Open (or reopen) the tracker run; return what a resume needs to continue it."""

    @abstractmethod
    def metrics(self, values: Mapping[str, float], step: int) -> None: ...

    @abstractmethod
    def finish(self, summary: Mapping[str, float], tags: Mapping[str, str]) -> None:
        """The end-of-run metrics and the run's provenance, then close."""

    def close(self) -> None:  # noqa: B027 (most backends hold nothing to release)
        """Release what the tracker holds without finishing (a stop, a failure)."""


def register(cls: type[Tracker]) -> type[Tracker]:
    _REGISTRY[cls.name] = cls
    return cls


def tracker_class(name: str, load: Callable[[str], None]) -> type[Tracker]:
    """The backend named ``name``; ``load`` imports its module (and with it the package) on
    first use, so an unnamed tracker's package is never imported."""
    if name not in _REGISTRY:
        load(name)
    return _REGISTRY[name]


def flat(value: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """A nested record as ``a.b.c: scalar``: what trackers take as parameters and tags
    (metrics are named ``a/b``, which the trackers group into panels)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flat(item, f"{prefix}{sep}{key}" if prefix else str(key), sep))
        return out
    if isinstance(value, (list, tuple)):
        return {prefix: ", ".join(str(v) for v in value)}
    return {prefix: value}
