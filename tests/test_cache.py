"""The parquet feature cache: contents, metadata, row groups and when it is (not) rebuilt."""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
import soxr
import torch
from conftest import QUICK

from audiopetl.core.errors import DataError
from audiopetl.data.audio import read_audio
from audiopetl.data.manifest import class_names, read_manifest
from audiopetl.features import FEATURE_VERSION
from audiopetl.features.cache import file_sha256, read_folds, read_metadata
from audiopetl.features.fbank import LogMelExtractor
from audiopetl.study import Study, load_study


def quick_study(*overrides: str) -> Study:
    return load_study("config/config.yaml", "quick", list(overrides))


def test_cache_path_is_where_cli_wrote_it(synthetic_project):
    assert quick_study().cache_path("synthetic") == synthetic_project.cache
    assert synthetic_project.cache.is_file()


def test_round_trip_folds(synthetic_project):
    manifest = read_manifest(synthetic_project.manifest)
    for folds in ([1], [2, 3], None):
        features = read_folds(synthetic_project.cache, folds)
        expected = manifest if folds is None else manifest[manifest["fold"].isin(folds)]
        assert len(features) == len(expected) == (72 if folds is None else 24 * len(folds))
        assert features.features.shape == (len(expected), 64, 128)
        assert features.features.dtype == torch.float16
        assert features.features.is_contiguous()
        assert features.labels.dtype == torch.int64
        assert sorted(features.clip_ids) == sorted(expected["clip_id"])
        by_id = expected.set_index("clip_id")
        assert features.labels.tolist() == by_id.loc[features.clip_ids, "label"].tolist()
        assert features.folds.tolist() == by_id.loc[features.clip_ids, "fold"].tolist()
        assert set(features.folds.tolist()) == set(folds or [1, 2, 3])
        # 0.7 s clips would give 68 frames; only what fills target_length 64 is read.
        assert set(features.n_frames.tolist()) == {64}


def test_round_trip_values_equal_direct_computation(synthetic_project):
    study = quick_study()
    manifest = read_manifest(synthetic_project.manifest)
    features = read_folds(synthetic_project.cache, [2])
    extractor = LogMelExtractor(study.features("synthetic").record())
    paths = manifest.set_index("clip_id").loc[features.clip_ids, "path"]
    waves = [read_audio(p, extractor.sample_rate, extractor.max_samples) for p in paths]
    direct, n_frames = extractor(waves)
    assert n_frames == features.n_frames.tolist()
    cached = features.features.float()
    bound = 2.0**-11 * direct.abs() + 2.0**-24 + 1e-6  # float16 rounding + batch composition
    assert bool(((cached - direct).abs() <= bound).all())
    assert float((cached - direct).abs().max()) > 0  # it really is float16
    # The features are writable (a copy, not a view into arrow's buffer).
    features.features[0, 0, 0] = 0


def test_metadata(synthetic_project):
    study = quick_study()
    meta = read_metadata(synthetic_project.cache)
    manifest = read_manifest(synthetic_project.manifest)
    assert meta["dataset"] == "synthetic"
    assert meta["feature_version"] == FEATURE_VERSION
    assert meta["features"] == study.features("synthetic").record()
    assert meta["shape"] == [64, 128] and meta["dtype"] == "float16"
    assert meta["manifest_sha256"] == file_sha256(synthetic_project.manifest)
    assert meta["class_names"] == class_names(manifest)
    assert meta["class_names"] == ["tone_0", "chirp_0", "noise_burst_0", "click_train_0"]
    versions = meta["versions"]
    assert versions["torch"] == torch.__version__
    assert versions["numpy"] == np.__version__
    assert versions["soundfile"] == soundfile.__version__
    assert versions["soxr"] == soxr.__version__
    assert {"python", "pyarrow"} <= set(versions)
    assert meta["rows"] == 72 and meta["skipped"] == []
    observed = meta["observed"]
    assert observed["frames"] == 72 * 64
    assert np.isfinite(observed["mean"]) and observed["std"] > 0
    # The observed statistics are those of the unnormalised log-mels actually stored.
    raw = read_folds(synthetic_project.cache).features.double() * (
        2 * study.config["features"]["std"]
    )
    raw += study.config["features"]["mean"]
    assert observed["mean"] == pytest.approx(float(raw.mean()), abs=1e-2)
    assert observed["std"] == pytest.approx(float(raw.std()), rel=1e-2)


def test_row_groups(synthetic_project, cli):
    result = cli("cache", "synthetic", *QUICK, "--force", "--set", "cache.row_group_size=5")
    assert result.code == 0, result.err
    parquet = pq.ParquetFile(synthetic_project.cache)
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    assert sum(sizes) == 72
    assert parquet.num_row_groups >= math.ceil(72 / 5) > 1
    assert max(sizes) <= 5
    assert len(read_folds(synthetic_project.cache, [3])) == 24


def test_default_row_group_size_gives_one_group(synthetic_project):
    assert pq.ParquetFile(synthetic_project.cache).num_row_groups == 1


def test_second_cache_run_does_not_rewrite(synthetic_project, cli):
    before = os.stat(synthetic_project.cache).st_mtime_ns
    result = cli("cache", "synthetic", *QUICK)
    assert result.code == 0, result.err
    assert result.out.strip() == str(synthetic_project.cache)
    assert os.stat(synthetic_project.cache).st_mtime_ns == before
    # --force does rewrite.
    os.utime(synthetic_project.cache, ns=(before - 10**9, before - 10**9))
    assert cli("cache", "synthetic", *QUICK, "--force").code == 0
    assert os.stat(synthetic_project.cache).st_mtime_ns != before - 10**9


def test_changed_manifest_rebuilds(synthetic_project, cli):
    manifest = synthetic_project.manifest
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:-1]))  # drop one clip
    result = cli("cache", "synthetic", *QUICK)
    assert result.code == 0, result.err
    meta = read_metadata(synthetic_project.cache)
    assert meta["rows"] == 71
    assert meta["manifest_sha256"] == file_sha256(manifest)


def test_feature_change_gives_new_file_training_change_does_not(synthetic_project, cli):
    base = quick_study().cache_path("synthetic")
    assert quick_study("training.epochs=1").cache_path("synthetic") == base
    assert quick_study("strategies.lora.rank=2").cache_path("synthetic") == base
    assert quick_study("cache.row_group_size=7").cache_path("synthetic") == base
    shorter = quick_study("features.target_length=32").cache_path("synthetic")
    assert shorter != base and shorter.parent == base.parent
    assert quick_study("features.num_mel_bins=64").cache_path("synthetic") not in (base, shorter)
    # A dataset's own feature block counts too.
    own = quick_study("datasets.synthetic.features={target_length: 32}").cache_path("synthetic")
    assert own == shorter

    result = cli("cache", "synthetic", *QUICK, "--set", "features.target_length=32")
    assert result.code == 0, result.err
    assert result.out.strip() == str(shorter)
    assert shorter.is_file() and base.is_file()
    assert read_folds(shorter, [1]).features.shape == (24, 32, 128)
    before = os.stat(base).st_mtime_ns
    result = cli("cache", "synthetic", *QUICK, "--set", "training.epochs=1")
    assert result.out.strip() == str(base)
    assert os.stat(base).st_mtime_ns == before


def test_read_metadata_errors(tmp_path):
    with pytest.raises(DataError, match="feature cache not found"):
        read_metadata(tmp_path / "nope.parquet")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(
        DataError, match=r"junk\.parquet: the feature cache is damaged \(not a readable"
    ):
        read_metadata(junk)
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"a": [1]}), foreign)
    with pytest.raises(DataError, match="not an audiopetl feature cache"):
        read_metadata(foreign)
