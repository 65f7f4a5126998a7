"""The two pinned environments: the legacy stack (torch 1.13.1 + transformers 4.28.1) runs the
unit tests and the quick preset, and its results agree with the modern stack's.

The legacy venv is built by `bash envs/install.sh legacy` (CI does). Without it these tests
skip, unless AUDIOPETL_REQUIRE_LEGACY=1 (set by .ci/run), where its absence is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from project_copy import copy_workflow, edit_preset

ROOT = Path(__file__).resolve().parents[1]
LEGACY_BIN = ROOT / ".venv-legacy" / "bin"
EXPERIMENT = "quick"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def legacy_bin() -> Path:
    if not (LEGACY_BIN / "python").is_file():
        message = "no legacy environment: run `bash envs/install.sh legacy`"
        if os.environ.get("AUDIOPETL_REQUIRE_LEGACY") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return LEGACY_BIN


def env_for(bin_dir: Path, name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "VIRTUAL_ENV"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["AUDIOPETL_ENV"] = name
    return env


def test_legacy_stack_is_what_it_claims(legacy_bin: Path) -> None:
    probe = (
        "import json, torch, transformers, peft, numpy; print(json.dumps({'torch': "
        "torch.__version__, 'transformers': transformers.__version__, 'peft': peft.__version__,"
        " 'numpy': numpy.__version__}))"
    )
    out = subprocess.run(
        [legacy_bin / "python", "-c", probe], capture_output=True, text=True, check=True
    )
    versions = json.loads(out.stdout)
    assert versions["torch"].startswith("1.13.1")
    assert versions["transformers"] == "4.28.1"
    assert versions["numpy"].startswith("1.")


def test_unit_tests_pass_in_the_legacy_environment(legacy_bin: Path) -> None:
    result = subprocess.run(
        [
            legacy_bin / "python",
            "-m",
            "pytest",
            "-q",
            "-m",
            "not slow",
            "-p",
            "no:cacheprovider",
            "tests",
        ],
        cwd=ROOT,
        env=env_for(legacy_bin, "legacy"),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
    assert result.returncode == 0, tail
    assert " passed" in tail


def run_quick(bin_dir: Path, name: str, folder: Path, change: dict | None = None) -> Path:
    copy_workflow(folder)
    if change:
        edit_preset(folder, EXPERIMENT, change)
    result = subprocess.run(
        [
            bin_dir / "python",
            "-m",
            "snakemake",
            "--cores",
            "1",
            "--config",
            f"experiment={EXPERIMENT}",
        ],
        cwd=folder,
        env=env_for(bin_dir, name),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, f"{name}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return folder / "results" / EXPERIMENT


# A second model kind beside the quick preset's AST: Whisper's encoder on its own front end,
# pretrained on the source task as the AST is.
TWO_KINDS = {
    "models": {
        "tiny-whisper": {
            "kind": "whisper-encoder",
            "pretrained": None,
            "pretrain": {"dataset": "synthetic-source", "strategy": "full", "epochs": 4},
            "attn_implementation": "sdpa",
            "architecture": {
                "d_model": 32,
                "encoder_layers": 1,
                "encoder_attention_heads": 2,
                "encoder_ffn_dim": 64,
            },
        }
    },
    "study": {"models": ["tiny-ast", "tiny-whisper"]},
}


def test_quick_preset_agrees_across_environments(legacy_bin: Path, tmp_path: Path) -> None:
    """The quick preset with two model kinds (AST and Whisper's encoder), run in both
    environments and compared by `compare-envs`."""
    modern_bin = Path(sys.executable).parent
    (tmp_path / "modern").mkdir()
    (tmp_path / "legacy").mkdir()
    # Side by side, one core each: the two studies are independent.
    with ThreadPoolExecutor(max_workers=2) as pool:
        modern = pool.submit(run_quick, modern_bin, "modern", tmp_path / "modern", TWO_KINDS)
        legacy = pool.submit(run_quick, legacy_bin, "legacy", tmp_path / "legacy", TWO_KINDS)
        results_modern, results_legacy = modern.result(), legacy.result()
    for results, name in ((results_modern, "modern"), (results_legacy, "legacy")):
        run_json = next(results.rglob("run.json"))
        assert json.loads(run_json.read_text())["environment"]["name"] == name
    # The report is kept under results/ of the checkout, where CI and people find it.
    report = ROOT / "results" / "env-comparison" / f"{EXPERIMENT}.md"
    result = subprocess.run(
        [modern_bin / "audiopetl", "compare-envs", results_modern, results_legacy, "--out", report],
        capture_output=True,
        text=True,
    )
    print(report.read_text())
    assert result.returncode == 0, result.stdout + result.stderr
    verdict = json.loads(report.with_suffix(".json").read_text())
    assert verdict["passed"] is True
    assert verdict["environments"] == ["modern", "legacy"]
    # Per model kind, the source-task pretraining plus 3 strategies x 2 folds.
    assert len(verdict["runs"]) == 2 * 7
    assert {r["model"] for r in verdict["runs"]} == {"tiny-ast", "tiny-whisper"}
    # Identical initial weights: the first epoch differs by rounding only.
    assert max(r["first_loss_rel_diff"] for r in verdict["runs"]) < 1e-5


# Every method of our own the legacy stack runs, one fold, one epoch: the first epoch's loss must
# agree, as it does for the quick preset's three. (peft 0.3's only other tuner, AdaLoRA, needs
# dropout there, whose random draws no two torch releases promise to share; tests/test_petl.py
# trains it in both environments.)
EVERY_METHOD = {
    "strategies": {
        "bitfit": {"kind": "bitfit", "lr": 5.0e-3},
        "prompt": {"kind": "prompt", "lr": 1.0e-2, "tokens": 4, "deep": False},
        "prompt-deep": {"kind": "prompt", "lr": 1.0e-2, "tokens": 4, "deep": True},
        "prefix": {"kind": "prefix", "lr": 1.0e-2, "tokens": 4},
        "adapter": {"kind": "adapter", "lr": 5.0e-3, "placement": "houlsby",
                    "mode": "sequential", "reduction": 4},
        "conformer": {"kind": "conformer", "lr": 5.0e-3, "placement": "pfeiffer",
                      "mode": "parallel", "reduction": 4, "kernel": 5},
    },
    "training": {"epochs": 1},
    "study": {
        "strategies": ["full", "linear", "lora", "bitfit", "prompt", "prompt-deep", "prefix",
                       "adapter", "conformer"],
        "folds": [1],
    },
}  # fmt: skip


def test_every_method_starts_alike_in_both_environments(legacy_bin: Path, tmp_path: Path) -> None:
    modern_bin = Path(sys.executable).parent
    (tmp_path / "modern").mkdir()
    (tmp_path / "legacy").mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:
        modern = pool.submit(run_quick, modern_bin, "modern", tmp_path / "modern", EVERY_METHOD)
        legacy = pool.submit(run_quick, legacy_bin, "legacy", tmp_path / "legacy", EVERY_METHOD)
        results_modern, results_legacy = modern.result(), legacy.result()
    report = tmp_path / "every-method.md"
    subprocess.run(
        [modern_bin / "audiopetl", "compare-envs", results_modern, results_legacy, "--out", report],
        capture_output=True,
        text=True,
        check=False,
    )
    verdict = json.loads(report.with_suffix(".json").read_text())
    runs = {r["strategy"]: r for r in verdict["runs"] if r["run"].startswith("runs/")}
    assert set(EVERY_METHOD["study"]["strategies"]) <= set(runs), sorted(runs)
    for strategy, run in runs.items():
        assert run["first_loss_rel_diff"] < 1e-4, (strategy, run)
    assert verdict["only_in_a"] == [] and verdict["only_in_b"] == []
