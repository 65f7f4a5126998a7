"""Copy the workflow's files into a temporary project, as a user's checkout would hold them,
and edit its presets as a user would."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["Snakefile", "rules", "config", "workflow", "envs"]


def copy_workflow(folder: Path, names: Iterable[str] = PROJECT_FILES) -> Path:
    """Copy ``names`` from the checkout into ``folder``; links stay links (the `slurm` profile
    link), and names the checkout lacks are skipped."""
    for name in names:
        source = ROOT / name
        if source.is_symlink():
            os.symlink(os.readlink(source), folder / name)
        elif source.is_dir():
            shutil.copytree(source, folder / name)
        elif source.exists():
            shutil.copy2(source, folder / name)
    return folder


def deep_merge(base: dict, extra: dict) -> dict:
    """``extra`` merged into ``base`` key by key, nested mappings included; returns ``base``."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def edit_preset(project: Path, experiment: str, change: dict) -> None:
    """Merge ``change`` into the project's preset config/experiments/EXPERIMENT.yaml."""
    path = project / "config" / "experiments" / f"{experiment}.yaml"
    preset = deep_merge(yaml.safe_load(path.read_text()), change)
    path.write_text(yaml.safe_dump(preset, sort_keys=False))
