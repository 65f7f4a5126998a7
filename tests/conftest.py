"""Shared fixtures: throw-away project folders, the CLI run in-process, the quick synthetic data.

The CLI resolves ``config/config.yaml`` and ``data/...`` against the current directory, so every
test that runs it works in a temporary project folder holding a copy of the repository's
``config/`` and nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from audiopetl.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "config"
SHARED_DATA = Path("/work/shared/data")
ESC50_SUBSET = SHARED_DATA / "esc50-subset"
FSDD = SHARED_DATA / "fsdd" / "recordings"
FSDD_PATTERN = r"(?P<label>\d)_(?P<group>[a-z]+)_\d+\.wav"

# Every test of the pipeline uses the quick preset: a few dozen short clips.
QUICK = ("--experiment", "quick", "--quiet")

needs_esc50 = pytest.mark.skipif(
    not (ESC50_SUBSET / "meta" / "esc50.csv").is_file(), reason="real ESC-50 subset not available"
)
needs_fsdd = pytest.mark.skipif(not FSDD.is_dir(), reason="real FSDD recordings not available")


def make_project(dest: Path) -> Path:
    """A project folder at ``dest`` with a copy of the repository's config (schema link
    resolved: the schema itself is loaded from the package anyway)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(CONFIG_DIR, dest / "config")
    return dest


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by its relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def _run_main(args: tuple[object, ...]) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_:  # argparse: --help, usage errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``audiopetl ARGS...`` in-process in the current directory: code, stdout, stderr."""

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        code = _run_main(args)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project (config only) as the current directory."""
    root = make_project(tmp_path / "project")
    monkeypatch.chdir(root)
    return root


@dataclass(frozen=True)
class BuiltProject:
    """The quick synthetic dataset fetched and cached once per session; treat as read-only."""

    root: Path
    manifest: Path  # relative to root
    cache: Path  # relative to root


@pytest.fixture(scope="session")
def quick_synthetic(tmp_path_factory: pytest.TempPathFactory) -> BuiltProject:
    root = make_project(tmp_path_factory.mktemp("quick-synthetic") / "project")
    sink = io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(sink):
        assert _run_main(("fetch", "synthetic", *QUICK)) == 0
        assert _run_main(("cache", "synthetic", *QUICK)) == 0
    manifest = Path("data/raw/synthetic/manifest.csv")
    caches = sorted((root / "data" / "features").glob("synthetic-*.parquet"))
    assert (root / manifest).is_file() and len(caches) == 1
    return BuiltProject(root, manifest, caches[0].relative_to(root))


@pytest.fixture
def synthetic_project(
    quick_synthetic: BuiltProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BuiltProject]:
    """A private, writable copy of the built quick synthetic project, as the current directory."""
    root = tmp_path / "project"
    shutil.copytree(quick_synthetic.root, root)
    monkeypatch.chdir(root)
    yield BuiltProject(root, quick_synthetic.manifest, quick_synthetic.cache)
