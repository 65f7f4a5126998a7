"""A dataset's files belong to its settings: the raw folder and the cache are named by a hash
of what decides their content, record it, and a changed setting is noticed."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from conftest import CONFIG_DIR, QUICK, BuiltProject

from audiopetl.core import atomic
from audiopetl.core.atomic import atomic_dir
from audiopetl.study import Study, load_study


def quick(*sets: str) -> Study:
    return load_study(CONFIG_DIR / "config.yaml", "quick", sets)


def test_the_id_follows_what_decides_the_files() -> None:
    base = quick()
    esc50 = base.dataset("esc50").data_id
    # Where ESC-50 comes from does not change what it is (every clip is md5-verified) ...
    for setting in (
        "datasets.esc50.esc50.url=https://example.org/elsewhere.zip",
        "datasets.esc50.esc50.archive=/somewhere/ESC-50-master.zip",
        "datasets.esc50.esc50.retries=9",
        "datasets.esc50.esc50.timeout_s=1",
    ):
        assert quick(setting).dataset("esc50").data_id == esc50, setting
    # ... which clips it holds and how they are folded do.
    assert quick("datasets.esc50.esc50.subset=true").dataset("esc50").data_id != esc50
    assert quick("datasets.esc50.esc50.folds=4").dataset("esc50").data_id != esc50
    synthetic = base.dataset("synthetic").data_id
    assert quick("datasets.synthetic.synthetic.seed=1").dataset("synthetic").data_id != synthetic
    retargeted = quick("datasets.synthetic.features={target_length: 32}")
    assert retargeted.dataset("synthetic").data_id == synthetic
    # The quick preset and the default define `synthetic` differently: two folders.
    default = load_study(CONFIG_DIR / "config.yaml")
    assert default.raw_dir("synthetic") != base.raw_dir("synthetic")
    # A cache belongs to its data as well as to its feature settings.
    assert quick("datasets.synthetic.synthetic.seed=1").features("synthetic").feature_id != (
        base.features("synthetic").feature_id
    )


def test_a_changed_setting_on_the_cli_is_fetched_and_cached_anew(
    synthetic_project: BuiltProject, cli
) -> None:
    before = (synthetic_project.root / synthetic_project.manifest).read_bytes()
    reseeded = ("--set", "datasets.synthetic.synthetic.seed=1")
    fetched = cli("fetch", "synthetic", *QUICK, *reseeded)
    assert fetched.code == 0, fetched.err
    new_manifest = quick(reseeded[1]).manifest_path("synthetic")
    assert fetched.out.strip() == str(new_manifest) != str(synthetic_project.manifest)
    assert new_manifest.is_file()
    cached = cli("cache", "synthetic", *QUICK, *reseeded)
    assert cached.code == 0, cached.err
    assert cached.out.strip() == str(quick(reseeded[1]).cache_path("synthetic"))
    # The first copy is untouched, and asking for it again costs nothing.
    assert (synthetic_project.root / synthetic_project.manifest).read_bytes() == before
    again = cli("cache", "synthetic", *QUICK)
    assert again.out.strip() == str(synthetic_project.cache)


def test_a_folder_recording_other_settings_is_refused(synthetic_project: BuiltProject, cli) -> None:
    record = synthetic_project.root / synthetic_project.manifest.parent / "dataset.json"
    data = json.loads(record.read_text())
    assert data["id"] == quick().dataset("synthetic").data_id
    data["settings"]["seed"] += 1  # as if copied in from another definition
    record.write_text(json.dumps(data))
    result = cli("fetch", "synthetic", *QUICK)
    assert result.code == 1
    assert "was made from other settings of dataset 'synthetic'" in result.err
    assert "run `audiopetl fetch synthetic --force`" in result.err
    assert cli("fetch", "synthetic", *QUICK, "--force").code == 0
    assert json.loads(record.read_text())["settings"]["seed"] == data["settings"]["seed"] - 1


@pytest.mark.parametrize("can_exchange", [True, False])
def test_atomic_dir_replaces_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, can_exchange: bool
) -> None:
    if not can_exchange:
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    target = tmp_path / "run"
    for version in range(3):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text(str(version))
        assert (target / "weights").read_text() == str(version)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing left beside it


def test_atomic_dir_never_leaves_the_target_missing(tmp_path: Path) -> None:
    # Linux swaps the two folders in one step (renameat2): a reader polling all along never
    # finds the folder missing, as it would between "move the old aside" and "move the new in".
    target = tmp_path / "run"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("0")
    gaps: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if not (target / "weights").is_file():
                gaps.append(1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for version in range(1, 200):
            with atomic_dir(target) as tmp:
                (tmp / "weights").write_text(str(version))
    finally:
        done.set()
        watcher.join()
    assert gaps == []
    assert (target / "weights").read_text() == "199"
