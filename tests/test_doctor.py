"""`audiopetl doctor`: the report on this machine, broken set-ups made for real, and the judgement
of machines we do not have (an H100 beside torch 1.13.1, an old driver) from constructed facts."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import torch
import transformers
from conftest import CONFIG_DIR, LEGACY_PYTHON, REPO, make_project

import audiopetl.study
from audiopetl.cli.doctor import load_study
from audiopetl.cli.doctor.checks import Finding, diagnose, has_errors, has_kernels, study_needs
from audiopetl.cli.doctor.facts import (
    Disk,
    DriverGpu,
    Facts,
    Gpu,
    ImportCheck,
    driver_cuda,
    parse_version,
)
from audiopetl.cli.doctor.report import format_report
from audiopetl.cli.main import build_parser
from audiopetl.study import Study

needs_legacy = pytest.mark.legacy_env

# torch 1.13.1+cu117's kernel architectures, as its get_arch_list() reports them.
TORCH_1_13_ARCHS = ["sm_37", "sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86"]
TORCH_2_7_ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
A100 = Gpu(0, "NVIDIA A100-SXM4-40GB", (8, 0), bf16=True, memory_gb=39.4)
H100 = Gpu(0, "NVIDIA H100 80GB HBM3", (9, 0), bf16=True, memory_gb=79.1)
V100 = Gpu(0, "Tesla V100-SXM2-32GB", (7, 0), bf16=False, memory_gb=31.7)


# ---------------------------------------------------------------------------------------------
# the command on this machine, healthy and broken for real


def run_doctor(
    project: Path,
    *args: str,
    python: str = sys.executable,
    path_first: Path | None = None,
    library_path: Path | None = None,
) -> tuple[subprocess.CompletedProcess[str], dict]:
    """``audiopetl doctor`` in a fresh interpreter (as a user runs it), with its JSON report."""
    env = dict(os.environ)
    if library_path is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(library_path), env.get("LD_LIBRARY_PATH", "")) if p
        )
    # This checkout's code whichever interpreter runs it; ``path_first`` shadows installed ones.
    paths = [str(path_first)] if path_first else []
    paths += [str(REPO / "src"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    out = project / "doctor.json"
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [python, "-m", "audiopetl", "doctor", "--json", str(out), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.is_file(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def fake_distribution(root: Path, name: str, version: str, init: str) -> Path:
    """An installed distribution as importlib.metadata and the import system see one."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(init)
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


@pytest.fixture
def broken_torchaudio(tmp_path: Path) -> Path:
    """A torchaudio like PyPI's CUDA build beside a CPU torch: installed, fails on import."""
    return fake_distribution(
        tmp_path / "site",
        "torchaudio",
        "2.11.0",
        'raise OSError("libcudart.so.13: cannot open shared object file: '
        'No such file or directory")\n',
    )


def test_healthy_environment_passes_and_reports_what_is_installed(project: Path) -> None:
    proc, report = run_doctor(project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for version in (torch.__version__, transformers.__version__, peft.__version__):
        assert version in proc.stdout
    assert "Installed" in proc.stdout and "[FAIL]" not in proc.stdout
    facts = report["facts"]
    assert report["ok"] is True
    assert facts["python"] == platform.python_version()
    assert facts["torch"] == torch.__version__
    assert facts["torch_cuda"] == torch.version.cuda
    assert facts["transformers"] == transformers.__version__
    assert facts["peft"] == peft.__version__
    assert facts["imports"]["transformers"]["ok"] and facts["imports"]["peft"]["ok"]
    assert len(facts["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    # The cache folder does not exist yet: free space is measured where it will be made.
    data = next(d for d in facts["disks"] if d["label"] == "paths.data")
    assert data["path"] == "data" and Path(data["checked"]).resolve() == project.resolve()
    assert data["free_gb"] > 0
    assert all(f["level"] != "error" for f in report["findings"])


def test_broken_torchaudio_fails_with_the_fix(project: Path, broken_torchaudio: Path) -> None:
    proc, report = run_doctor(project, path_first=broken_torchaudio)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "torchaudio 2.11.0 is installed but does not import" in proc.stdout
    assert "libcudart.so.13" in proc.stdout
    assert "pip uninstall torchaudio" in proc.stdout
    facts = report["facts"]
    assert facts["torchaudio"] == "2.11.0"
    assert facts["imports"]["torchaudio"]["ok"] is False
    assert facts["imports"]["torchaudio"]["error"].startswith("OSError: libcudart.so.13")
    # transformers 5 imports torchaudio for its audio models once the metadata says it is
    # installed, and peft imports transformers' audio utilities with it: both break.
    if parse_version(transformers.__version__) >= parse_version("5"):
        for name in ("transformers", "peft"):
            check = facts["imports"][name]
            assert check["ok"] is False and "libcudart.so.13" in check["error"]
            assert f"[FAIL] {name} {facts[name]}" in proc.stdout
        assert "traceback runs through torchaudio" in proc.stdout


def test_missing_pkg_resources_breaks_an_old_librosa(project: Path, tmp_path: Path) -> None:
    site = fake_distribution(tmp_path / "site", "librosa", "0.9.2", "from pkg_resources import *\n")
    has_pkg_resources = (
        subprocess.run([sys.executable, "-c", "import pkg_resources"], check=False).returncode == 0
    )
    proc, report = run_doctor(project, path_first=site)
    assert report["facts"]["needs_pkg_resources"] == {"librosa": "0.9.2"}
    if has_pkg_resources:
        assert proc.returncode == 0, proc.stdout
    else:  # setuptools >= 82, as in the modern environment
        assert proc.returncode == 1, proc.stdout
        assert "librosa 0.9.2 import pkg_resources" in proc.stdout
        assert "librosa>=0.10.2" in proc.stdout


def test_a_broken_config_is_a_finding_not_a_crash(project: Path) -> None:
    proc, report = run_doctor(project, "--set", "training.precison=bf16")
    assert proc.returncode == 1
    assert "Installed" in proc.stdout and torch.__version__ in proc.stdout
    assert "training.precison: unknown key (did you mean 'precision'?)" in proc.stdout
    assert report["findings"][0]["title"] == "the configuration does not load"


def test_outside_a_project_the_environment_alone_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["doctor"])
    cfg, findings, source = load_study(args)
    assert cfg is None and source == "no configuration"
    assert [(f.level, f.title) for f in findings] == [
        ("warn", "no config/config.yaml here: checked the environment only")
    ]
    # Named explicitly, a missing file is an error.
    args = build_parser().parse_args(["doctor", "--config", "elsewhere.yaml"])
    assert [f.level for f in load_study(args)[1]] == ["error"]


# A stand-in for the NVIDIA driver: the calls the doctor makes, answering for one H100.
FAKE_LIBCUDA = r"""
#include <string.h>
int cuDriverGetVersion(int *version) { *version = DRIVER_VERSION; return 0; }
int cuInit(unsigned int flags) { return 0; }
int cuDeviceGetCount(int *count) { *count = 1; return 0; }
int cuDeviceGet(int *device, int ordinal) { *device = ordinal; return 0; }
int cuDeviceGetName(char *name, int len, int device) {
    strncpy(name, "NVIDIA H100 80GB HBM3", len); return 0;
}
int cuDeviceGetAttribute(int *value, int attribute, int device) {
    if (attribute == 75) { *value = 9; return 0; }  /* compute capability major */
    if (attribute == 76) { *value = 0; return 0; }  /* minor */
    return 1;
}
"""


needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None, reason="no C compiler for the stand-in driver"
)


def stand_in_driver(folder: Path, version: int) -> Path:
    """A folder holding a libcuda.so.1 that reports CUDA ``version`` and one H100."""
    folder.mkdir()
    (folder / "libcuda.c").write_text(FAKE_LIBCUDA)
    command = ["cc", "-shared", "-fPIC", f"-DDRIVER_VERSION={version}"]
    subprocess.run([*command, "-o", "libcuda.so.1", "libcuda.c"], cwd=folder, check=True)
    return folder


@needs_cc
def test_the_driver_is_asked_directly(project: Path, tmp_path: Path) -> None:
    """The driver's CUDA version and GPUs come from libcuda, not torch: a CPU build of torch (or
    one newer than the driver) sees no GPU, and those are the cases the report must explain."""
    if torch.version.cuda is not None:
        pytest.skip("a CUDA build of torch would talk to the stand-in driver itself")
    driver = stand_in_driver(tmp_path / "driver", 12040)
    proc, report = run_doctor(project, library_path=driver)
    assert proc.returncode == 0, proc.stdout  # device auto: the study runs, on the CPU
    facts = report["facts"]
    assert facts["driver_version"] == 12040 and facts["gpus"] == []
    assert facts["driver_gpus"] == [{"name": "NVIDIA H100 80GB HBM3", "capability": [9, 0]}]
    assert "CUDA driver    CUDA 12.4" in proc.stdout
    assert "NVIDIA H100 80GB HBM3, compute capability 9.0 (driver only" in proc.stdout
    assert "[warn] a CPU build of torch" in proc.stdout


@needs_legacy
def test_legacy_environment_passes_and_warns_about_torch_load(project: Path) -> None:
    proc, report = run_doctor(project, python=str(LEGACY_PYTHON))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert parse_version(report["facts"]["torch"]) < parse_version("2.6")
    assert "[warn] torch 1.13" in proc.stdout and "torch.load" in proc.stdout
    # A CUDA 11.7 build: its kernel list is known even on a machine without a GPU, and it is
    # the list the judgement tests below put beside an H100.
    assert report["facts"]["arch_list"] == TORCH_1_13_ARCHS


@needs_legacy
@needs_cc
@pytest.mark.parametrize(
    ("version", "expected"),
    [
        # Older major version than torch 1.13.1's CUDA 11.7: CUDA refuses to start.
        (10020, "[FAIL] torch 1.13.1+cu117 is built for CUDA 11.7, newer than the driver's CUDA"),
        # New enough, but the stand-in lacks the calls the CUDA runtime makes: torch says so.
        (12040, "[FAIL] torch 1.13.1+cu117 cannot use the 1 GPU the driver reports"),
    ],
)
def test_legacy_torch_that_cannot_use_the_gpu_fails(
    project: Path, tmp_path: Path, version: int, expected: str
) -> None:
    driver = stand_in_driver(tmp_path / "driver", version)
    proc, report = run_doctor(project, python=str(LEGACY_PYTHON), library_path=driver)
    assert proc.returncode == 1, proc.stdout
    assert expected in proc.stdout
    assert report["facts"]["gpus"] == [] and report["facts"]["driver_version"] == version
    # auto on a machine with a GPU: training would fall back to the CPU without a word.
    assert "training.device is cuda" not in proc.stdout


@needs_legacy
def test_legacy_transformers_survives_a_broken_torchaudio(
    project: Path, broken_torchaudio: Path
) -> None:
    proc, report = run_doctor(project, python=str(LEGACY_PYTHON), path_first=broken_torchaudio)
    assert proc.returncode == 1
    imports = report["facts"]["imports"]
    assert imports["torchaudio"]["ok"] is False
    # transformers 4.28 does not import torchaudio for AST: the trap is torchaudio alone there.
    assert imports["transformers"]["ok"] and imports["peft"]["ok"]


# ---------------------------------------------------------------------------------------------
# judgement of constructed facts


def healthy(**changes: object) -> Facts:
    """A well set-up GPU machine: torch 2.7.1 for CUDA 12.6 on an A100 with a CUDA 12.8 driver."""
    facts = Facts(
        python="3.11.7",
        executable="/opt/venv/bin/python",
        platform="Linux-5.15-x86_64",
        environment="modern",
        torch="2.7.1+cu126",
        torch_error=None,
        torch_cuda="12.6",
        torch_hip=None,
        arch_list=TORCH_2_7_ARCHS,
        transformers="4.46.3",
        peft="0.13.2",
        torchaudio=None,
        numpy="2.1.3",
        setuptools="75.8.0",
        imports={name: ImportCheck(True) for name in ("transformers", "peft", "pkg_resources")},
        needs_pkg_resources={},
        gpus=[A100],
        driver_version=12080,
        driver_gpus=[DriverGpu(A100.name, A100.capability)],
        disks=[Disk("paths.data", "data", "/scratch/project", 812.0)],
    )
    return dataclasses.replace(facts, **changes)


# The default's methods, each once (its study also sweeps LoRA's learning rate: lora-lr).
METHODS = "study.strategies=[full, linear, lora, adapter, conformer, prompt]"


def study(*overrides: str) -> Study:
    return audiopetl.study.load_study(CONFIG_DIR / "config.yaml", None, [METHODS, *overrides])


def levels(findings: list[Finding], word: str) -> list[str]:
    """The levels of the findings whose title mentions ``word``."""
    return [f.level for f in findings if word in f.title]


def test_healthy_facts_have_no_error_and_no_warning() -> None:
    findings = diagnose(healthy(), study())
    assert not has_errors(findings)
    assert [f for f in findings if f.level == "warn"] == []


def test_h100_with_torch_1_13_has_no_kernels() -> None:
    facts = healthy(
        torch="1.13.1+cu117",
        torch_cuda="11.7",
        arch_list=TORCH_1_13_ARCHS,
        numpy="1.26.4",
        gpus=[H100],
        driver_gpus=[DriverGpu(H100.name, H100.capability)],
    )
    findings = diagnose(facts, study())
    assert levels(findings, "has no kernels for GPU 0 NVIDIA H100") == ["error"]
    # A study that stays on the CPU is not broken by it.
    assert levels(diagnose(facts, study("training.device=cpu")), "no kernels") == ["warn"]
    # The same torch on the A100 it was built for is fine.
    assert levels(diagnose(dataclasses.replace(facts, gpus=[A100]), study()), "kernels") == []


def test_kernel_compatibility_rules() -> None:
    assert not has_kernels((9, 0), TORCH_1_13_ARCHS)
    assert has_kernels((8, 9), TORCH_1_13_ARCHS)  # sm_86 binaries run on 8.9 (same major)
    assert not has_kernels((7, 5), ["sm_80", "sm_86"])  # never on an older GPU
    assert has_kernels((9, 0), ["sm_80", "compute_80"])  # PTX: compiled for newer GPUs
    assert not has_kernels((7, 5), ["sm_80", "compute_80"])
    assert has_kernels((9, 0), ["sm_80", "sm_90a"])
    assert has_kernels((12, 0), ["sm_90", "sm_100", "sm_120"])


def test_torch_cuda_newer_than_the_driver() -> None:
    assert driver_cuda(11080) == (11, 8) and driver_cuda(12040) == (12, 4)
    title = "newer than the driver's CUDA"
    old_driver = healthy(torch="2.3.1+cu121", torch_cuda="12.1", gpus=[], driver_version=11080)
    assert levels(diagnose(old_driver, study()), title) == ["error"]
    assert levels(diagnose(old_driver, study("training.device=cpu")), title) == ["warn"]
    # Same major version: minor version compatibility runs it.
    minor = healthy(torch_cuda="12.6", driver_version=12040)
    assert levels(diagnose(minor, study()), title) == ["warn"]
    assert levels(diagnose(healthy(driver_version=12060), study()), "driver's CUDA 12.6") == ["ok"]


def test_bf16_on_a_gpu_without_it() -> None:
    v100 = healthy(gpus=[V100])
    findings = diagnose(v100, study("training.precision=bf16"))
    everything = "full, linear, lora, adapter, conformer, prompt"
    assert levels(findings, f"training.precision bf16 ({everything}) on GPU 0 Tesla") == ["error"]
    assert not has_errors(diagnose(v100, study("training.precision=fp16")))
    # Newer torch emulates bf16 on such a GPU: it runs, slowly.
    emulated = healthy(gpus=[dataclasses.replace(V100, bf16=True)])
    assert levels(diagnose(emulated, study("training.precision=bf16")), "emulated") == ["warn"]
    assert not has_errors(diagnose(healthy(), study("training.precision=bf16")))
    # bf16 autocast on the CPU is supported.
    assert not has_errors(diagnose(v100, study("training.precision=bf16", "training.device=cpu")))


def test_fp16_on_the_cpu() -> None:
    cpu_only = healthy(torch="2.7.1+cpu", torch_cuda=None, arch_list=[], gpus=[], driver_gpus=[])
    findings = diagnose(cpu_only, study("strategies.lora.training.precision=fp16"))
    assert levels(findings, "training.precision fp16 (lora) on the CPU") == ["error"]
    assert not has_errors(diagnose(cpu_only, study()))


def test_cuda_device_without_a_gpu() -> None:
    no_driver = healthy(gpus=[], driver_version=None, driver_gpus=[])
    findings = diagnose(no_driver, study("training.device=cuda"))
    [finding] = [f for f in findings if "sees no GPU" in f.title]
    assert finding.level == "error" and "no CUDA driver" in finding.detail
    assert not has_errors(diagnose(no_driver, study()))  # auto: runs on the CPU


def test_cpu_torch_on_a_gpu_machine_is_a_warning() -> None:
    facts = healthy(torch="2.7.1+cpu", torch_cuda=None, arch_list=[], gpus=[])
    findings = diagnose(facts, study())
    assert levels(findings, "a CPU build of torch") == ["warn"]
    assert not has_errors(findings)


def test_a_cuda_torch_that_cannot_use_the_gpu() -> None:
    said = "CUDA initialization: CUDA unknown error"
    facts = healthy(gpus=[], torch_cuda_error=said)
    [finding] = [f for f in diagnose(facts, study()) if "cannot use the 1 GPU" in f.title]
    assert finding.level == "error" and said in finding.detail
    assert levels(diagnose(facts, study("training.device=cpu")), "cannot use") == ["warn"]
    # Asked for explicitly, the same machine fails as "cuda without a GPU", with torch's reason.
    findings = diagnose(facts, study("training.device=cuda"))
    assert levels(findings, "cannot use") == []
    assert [f.detail for f in findings if "sees no GPU" in f.title] == [f"torch says: {said}"]


def test_old_torch_warns_about_torch_load() -> None:
    old = healthy(torch="1.13.1+cu117", torch_cuda="11.7", numpy="1.26.4")
    assert levels(diagnose(old, study()), "torch.load") == ["warn"]
    assert levels(diagnose(healthy(torch="2.6.0+cu126"), study()), "torch.load") == []


def test_numpy_2_with_torch_1_13() -> None:
    facts = healthy(torch="1.13.1+cu117", torch_cuda="11.7", numpy="2.0.2")
    assert levels(diagnose(facts, study()), "numpy 2.0.2 with torch 1.13.1") == ["error"]


def test_missing_pkg_resources_with_librosa_0_9() -> None:
    missing = ImportCheck(False, "ModuleNotFoundError: No module named 'pkg_resources'")
    imports = {**healthy().imports, "pkg_resources": missing}
    facts = healthy(setuptools="82.0.0", imports=imports, needs_pkg_resources={"librosa": "0.9.2"})
    [finding] = [f for f in diagnose(facts, study()) if "pkg_resources" in f.title]
    assert finding.level == "error" and "setuptools<82" in (finding.fix or "")
    assert not has_errors(diagnose(healthy(imports=imports), study()))  # nothing needs it


def test_broken_imports_are_errors_and_name_their_cause() -> None:
    error = "OSError: libcudart.so.13: cannot open shared object file"
    through = ImportCheck(False, error, f'File ".../torchaudio/__init__.py"\n{error}')
    facts = healthy(
        torchaudio="2.11.0",
        imports={
            "torchaudio": ImportCheck(False, error),
            "transformers": through,
            "peft": through,
            "pkg_resources": ImportCheck(True),
        },
    )
    findings = diagnose(facts, study())
    for word in ("torchaudio 2.11.0", "transformers 4.46.3: AST", "peft 0.13.2"):
        [finding] = [f for f in findings if word in f.title and f.level == "error"]
        assert "pip uninstall torchaudio" in (finding.fix or "")
    importable = healthy(
        torchaudio="2.7.1", imports={**healthy().imports, "torchaudio": ImportCheck(True)}
    )
    assert levels(diagnose(importable, study()), "torchaudio 2.7.1 imports") == ["ok"]


def test_transformers_versions() -> None:
    old = healthy(transformers="4.28.1")
    findings = diagnose(old, study())  # the default config asks for sdpa attention
    assert levels(findings, "attn_implementation sdpa needs transformers >= 4.36") == ["warn"]
    assert levels(diagnose(old, study("models.tiny-ast.attn_implementation=eager")), "sdpa") == []
    # From 4.36 nn.init does nothing while a model loads; audiopetl initialises explicitly.
    assert levels(diagnose(healthy(), study()), "nn.init") == ["ok"]
    assert levels(findings, "nn.init") == []


def test_low_disk_and_environment_mismatch_warn() -> None:
    low = healthy(disks=[Disk("paths.data", "data", "/home/me", 1.2)])
    assert levels(diagnose(low, study()), "only 1.2 GB free for paths.data") == ["warn"]
    # The config's `env` names the environment its rules run in.
    legacy, cfg = healthy(environment="legacy"), study().config
    cfg["env"] = "modern"
    assert levels(diagnose(legacy, Study(cfg)), "asks for the modern environment") == ["warn"]
    cfg["env"] = "legacy"
    assert levels(diagnose(legacy, Study(cfg)), "environment") == []


def test_without_a_config_the_environment_alone_is_judged() -> None:
    assert not has_errors(diagnose(healthy(), None))
    h100 = healthy(torch="1.13.1+cu117", arch_list=TORCH_1_13_ARCHS, numpy="1.26.4", gpus=[H100])
    assert levels(diagnose(h100, None), "no kernels") == ["error"]  # auto picks the GPU


def test_study_needs_follow_strategy_overrides() -> None:
    needs = study_needs(study("strategies.lora.training.precision=bf16"))
    runs = {run.strategies: (run.device, run.precision) for run in needs.runs}
    others = ("full", "linear", "adapter", "conformer", "prompt")
    assert runs == {others: ("auto", "auto"), ("lora",): ("auto", "bf16")}


def test_report_lists_facts_and_findings_with_fixes() -> None:
    facts = healthy(gpus=[V100])
    text = format_report(facts, diagnose(facts, study("training.precision=bf16")))
    assert text.startswith("Installed")
    assert "2.7.1+cu126 (CUDA 12.6)" in text and "CUDA 12.8" in text
    assert "Tesla V100-SXM2-32GB, compute capability 7.0" in text
    assert "[FAIL] training.precision bf16" in text
    assert "fix: set training.precision: fp16" in text
    assert text.endswith("1 problem would break the study; 0 warnings.")
