"""Shared fixtures: throw-away project folders, the CLI run in-process, the quick synthetic data.

The CLI resolves ``config/config.yaml`` and ``data/...`` against the current directory, so every
test that runs it works in a temporary project folder holding a copy of the repository's
``config/`` and nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from audiopetl.cli.main import main

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "config"
# The real audio for tests: ../shared/data beside the project, or where AUDIOPETL_SHARED_DATA
# points. Tests that need it are marked `shared_data`; without it they skip, unless
# AUDIOPETL_REQUIRE_SHARED=1 (set by .ci/run): there its absence is a failure.
SHARED_DATA = Path(os.environ.get("AUDIOPETL_SHARED_DATA") or REPO.parent / "shared" / "data")
ESC50_SUBSET = SHARED_DATA / "esc50-subset"
FSDD = SHARED_DATA / "fsdd" / "recordings"
FSDD_PATTERN = r"(?P<label>\d)_(?P<group>[a-z]+)_\d+\.wav"

# Every test of the pipeline uses the quick preset: a few dozen short clips.
QUICK = ("--experiment", "quick", "--quiet")

needs_esc50 = pytest.mark.shared_data(ESC50_SUBSET / "meta" / "esc50.csv")
needs_fsdd = pytest.mark.shared_data(FSDD)


# The legacy environment (bash envs/install.sh legacy). Tests marked `legacy_env` need it;
# without it they skip, unless AUDIOPETL_REQUIRE_LEGACY=1 (set by .ci/run).
LEGACY_PYTHON = REPO / ".venv-legacy" / "bin" / "python"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip, or in CI fail, a test whose real audio or legacy environment is missing: before
    its fixtures need them."""
    if item.get_closest_marker("legacy_env") and not LEGACY_PYTHON.is_file():
        message = "no legacy environment: run `bash envs/install.sh legacy`"
        if os.environ.get("AUDIOPETL_REQUIRE_LEGACY") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    for mark in item.iter_markers("shared_data"):
        missing = [Path(p) for p in mark.args if not Path(p).exists()]
        if missing:
            message = (
                f"needs the real audio at {missing[0]} (../shared/data beside the project, or "
                "AUDIOPETL_SHARED_DATA)"
            )
            if os.environ.get("AUDIOPETL_REQUIRE_SHARED") == "1":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)


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
    manifests = sorted((root / "data" / "raw").glob("synthetic-*/manifest.csv"))
    caches = sorted((root / "data" / "features").glob("synthetic-*.parquet"))
    assert len(manifests) == 1 and len(caches) == 1
    return BuiltProject(root, manifests[0].relative_to(root), caches[0].relative_to(root))


@pytest.fixture
def synthetic_project(
    quick_synthetic: BuiltProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BuiltProject]:
    """A private, writable copy of the built quick synthetic project, as the current directory."""
    root = tmp_path / "project"
    shutil.copytree(quick_synthetic.root, root)
    monkeypatch.chdir(root)
    yield BuiltProject(root, quick_synthetic.manifest, quick_synthetic.cache)
