"""The repository works on any machine: no tracked file names a path of the one it came from."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tracked_files() -> list[Path]:
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    return [ROOT / name for name in listing.decode().split("\0") if name]


def test_no_tracked_file_holds_a_path_of_this_machine() -> None:
    # The checkout's own folder, the folder above it (where ../shared sits) and the home
    # folder: none may appear in a file a user elsewhere gets, lock files included.
    machine = {str(ROOT), str(ROOT.parent) + "/", str(Path.home()) + "/"}
    # A checkout directly in a shared system folder (/tmp/audiopetl) makes that folder the one
    # above it; such a folder names no machine, and code may mention it.
    machine -= {"/", "/tmp/", "/var/tmp/", "/home/", "/opt/", "/srv/", "/mnt/"}
    found = []
    files = tracked_files()
    assert len(files) > 50
    for path in files:
        if path.is_symlink() or not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        found += [f"{path.relative_to(ROOT)}: {m}" for m in machine if m in text]
        if "file://" in text and path.suffix == ".txt":
            found.append(f"{path.relative_to(ROOT)}: a file:// requirement")
    assert found == [], found


def test_lock_files_pin_third_party_packages_only() -> None:
    for name in ("modern", "legacy"):
        lines = (ROOT / "envs" / f"{name}.lock.txt").read_text().splitlines()
        pins = [line for line in lines if line and not line.startswith("#")]
        assert pins and all("==" in line and " " not in line for line in pins), name
        names = {line.split("==")[0].lower() for line in pins}
        assert "audiopetl" not in names and not {"pip", "uv"} & names, name
        assert os.access(ROOT / "envs" / "lock.sh", os.X_OK)


def test_dvc_yaml_versions_every_file_of_the_report() -> None:
    import yaml

    from audiopetl.core.config import load_config
    from audiopetl.report.build import FIGURES_DIR, expected_outputs

    cfg = load_config(ROOT / "config" / "config.yaml")
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
    outs = {next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]}
    experiment = Path("results") / "${experiment}"
    for path in expected_outputs(cfg, experiment):
        if path.parent.name == FIGURES_DIR:
            path = path.parent
        assert str(path) in outs, f"dvc.yaml's report stage does not version {path}"
