"""`audiopetl doctor`: what is installed, and the known traps that would break the study.

Gathering and judging are separate: :func:`gather` looks at this machine and this Python
(versions, imports tried in subprocesses, GPUs, the CUDA driver, free disk) and returns plain
:class:`Facts`; :func:`diagnose` judges facts against a configuration and returns findings.
The judgement is therefore testable with facts of machines we do not have (an H100 beside
torch 1.13.1, an old driver), and the gathering is tested on the machine at hand.

Only a trap that would break the configured study is an error (non-zero exit); a risk that
does not stop it is a warning.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from packaging.version import InvalidVersion, Version

from audiopetl.core.config import DEFAULT_CONFIG, ConfigError, load_config, training_settings

Level = Literal["ok", "warn", "error"]

# Free space below which the feature cache and checkpoints of a real study may not fit: an
# ESC-50 cache at 512 frames is ~0.5 GB, a base-size AST checkpoint ~0.35 GB per full run.
LOW_DISK_GB = 5.0
# Generous: the first import of transformers compiles bytecode on a fresh install.
IMPORT_TIMEOUT_S = 300

# What each import check runs in a fresh interpreter. A failing import can leave half-initialised
# modules behind in the process that tried it, so the doctor never tries these in its own.
IMPORT_CHECKS = {
    "torchaudio": "import torchaudio",
    # AST is the model audiopetl builds; transformers imports it lazily, and that import is
    # what an installed-but-broken torchaudio breaks (transformers 5 trusts the metadata).
    "transformers": "from transformers import ASTConfig, ASTForAudioClassification",
    "peft": "import peft\nfrom peft import LoraConfig, get_peft_model",
    "pkg_resources": "import pkg_resources",
}

# Packages that import pkg_resources when they are imported, and the first release that does
# not; setuptools >= 82 no longer ships pkg_resources. Kept to the audio stack's usual company.
NEEDS_PKG_RESOURCES = {
    "librosa": "0.10.2",  # util/files.py and core/intervals.py up to 0.10.1
    "resampy": "0.4.3",  # filters.py up to 0.4.2
}


# ---------------------------------------------------------------------------------------------
# facts


@dataclass
class ImportCheck:
    """One import tried in a fresh interpreter."""

    ok: bool
    error: str | None = None  # the exception line, e.g. "OSError: libcudart.so.13: ..."
    traceback: str | None = None  # the end of stderr, to tell what caused the error


@dataclass
class Gpu:
    """A GPU as torch sees it."""

    index: int
    name: str
    capability: tuple[int, int]
    bf16: bool  # torch's autocast accepts bfloat16 on it (its own is_bf16_supported check)
    memory_gb: float


@dataclass
class DriverGpu:
    """A GPU as the CUDA driver sees it, whether or not the installed torch can use it."""

    name: str
    capability: tuple[int, int]


@dataclass
class Disk:
    label: str  # the config key, e.g. "paths.data"
    path: str
    checked: str  # the nearest existing folder: the path itself may not exist yet
    free_gb: float


@dataclass
class Facts:
    python: str
    executable: str
    platform: str
    environment: str
    torch: str | None
    torch_error: str | None
    torch_cuda: str | None  # the CUDA version torch was built with; None for a CPU build
    torch_hip: str | None
    arch_list: list[str]  # kernel architectures torch was built for, e.g. ["sm_80", "sm_86"]
    transformers: str | None
    peft: str | None
    torchaudio: str | None  # the installed distribution's version; None when not installed
    numpy: str | None
    setuptools: str | None
    imports: dict[str, ImportCheck]
    needs_pkg_resources: dict[str, str]  # installed package -> version
    gpus: list[Gpu]
    driver_version: int | None  # cuDriverGetVersion, e.g. 12040 for CUDA 12.4; None: no driver
    driver_gpus: list[DriverGpu]
    disks: list[Disk]
    config: str | None = None  # what the study was read from, for the report
    # What torch said when it found no usable GPU (its CUDA initialisation warning), if anything.
    torch_cuda_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def gather(cfg: Mapping[str, Any] | None = None, config_source: str | None = None) -> Facts:
    """Look at this interpreter and machine. Never raises for a broken environment."""
    installed = {name: _dist_version(name) for name in ("transformers", "peft", "torchaudio")}
    checks = [name for name in IMPORT_CHECKS if name != "torchaudio" or installed["torchaudio"]]
    # The import checks take seconds each: they run side by side while this process looks at
    # torch and the driver.
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        pending = {name: pool.submit(_import_check, IMPORT_CHECKS[name]) for name in checks}
        torch_facts = _torch_facts()
        driver = _cuda_driver()
        imports = {name: future.result() for name, future in pending.items()}
    return Facts(
        python=platform.python_version(),
        executable=sys.executable,
        platform=platform.platform(),
        environment=_environment_name(),
        **torch_facts,
        **installed,
        numpy=_dist_version("numpy"),
        setuptools=_dist_version("setuptools"),
        imports=imports,
        needs_pkg_resources=_packages_needing_pkg_resources(),
        driver_version=driver[0],
        driver_gpus=driver[1],
        disks=_disks(cfg),
        config=config_source,
    )


def _dist_version(name: str) -> str | None:
    # Distribution metadata, not an import: importing is what may be broken.
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _environment_name() -> str:
    try:
        from audiopetl.core.provenance import environment_name

        return environment_name()
    except Exception:  # provenance imports torch, which may be what is broken
        return os.environ.get("AUDIOPETL_ENV") or "unknown"


def _torch_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "torch": _dist_version("torch"),
        "torch_error": None,
        "torch_cuda": None,
        "torch_hip": None,
        "arch_list": [],
        "gpus": [],
        "torch_cuda_error": None,
    }
    try:
        import torch
    except Exception as err:  # a CUDA torch without its libraries raises OSError, not ImportError
        facts["torch_error"] = f"{type(err).__name__}: {err}"
        return facts
    facts["torch"] = torch.__version__
    facts["torch_cuda"] = torch.version.cuda
    facts["torch_hip"] = getattr(torch.version, "hip", None)
    # GPUs first: torch warns about a failed CUDA initialisation only the first time it tries.
    facts["gpus"], facts["torch_cuda_error"] = _torch_gpus(torch)
    facts["arch_list"] = _arch_list(torch)
    return facts


def _arch_list(torch: Any) -> list[str]:
    archs = list(torch.cuda.get_arch_list())
    if not archs:
        # get_arch_list() is empty whenever no GPU is usable; the build's own list tells what a
        # GPU machine would face, so read it where this torch exposes it (1.13 does, privately).
        flags = getattr(torch._C, "_cuda_getArchFlags", None)
        text = flags() if callable(flags) else None
        archs = text.split() if text else []
    return archs


def _torch_gpus(torch: Any) -> tuple[list[Gpu], str | None]:
    """The GPUs torch can use, or why it can use none when it says (a warning, not an error)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if not available:
        return [], str(caught[0].message) if caught else None
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        with torch.cuda.device(index):
            bf16 = bool(torch.cuda.is_bf16_supported())
        gpus.append(
            Gpu(
                index=index,
                name=props.name,
                capability=(props.major, props.minor),
                bf16=bf16,
                memory_gb=round(props.total_memory / 2**30, 1),
            )
        )
    return gpus, None


def _cuda_driver() -> tuple[int | None, list[DriverGpu]]:
    """The driver's CUDA version and GPUs, asked of libcuda itself.

    torch cannot report them when it is a CPU build or when the driver is older than its CUDA
    (it then sees no GPU at all), and those are exactly the cases to explain. Linux only.
    """
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None, []
    version = ctypes.c_int()
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None, []
    return version.value, _driver_gpus(lib)


def _driver_gpus(lib: Any) -> list[DriverGpu]:
    major_attr, minor_attr = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
    count = ctypes.c_int()
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    gpus = []
    for ordinal in range(count.value):
        device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        name = ctypes.create_string_buffer(256)
        if (
            lib.cuDeviceGet(ctypes.byref(device), ordinal) != 0
            or lib.cuDeviceGetName(name, len(name), device) != 0
            or lib.cuDeviceGetAttribute(ctypes.byref(major), major_attr, device) != 0
            or lib.cuDeviceGetAttribute(ctypes.byref(minor), minor_attr, device) != 0
        ):
            continue
        gpus.append(DriverGpu(name.value.decode(errors="replace"), (major.value, minor.value)))
    return gpus


def _import_check(code: str) -> ImportCheck:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=IMPORT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ImportCheck(False, f"timed out after {IMPORT_TIMEOUT_S} s")
    if proc.returncode == 0:
        return ImportCheck(True)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    error = lines[-1].strip() if lines else f"exit status {proc.returncode}"
    return ImportCheck(False, error, "\n".join(lines[-60:]))


def _packages_needing_pkg_resources() -> dict[str, str]:
    found = {}
    for name, fixed_in in NEEDS_PKG_RESOURCES.items():
        version = _dist_version(name)
        if version is not None and parse_version(version) < Version(fixed_in):
            found[name] = version
    return found


def _disks(cfg: Mapping[str, Any] | None) -> list[Disk]:
    paths = (cfg or {}).get("paths") or {"data": "data", "results": "results"}
    return [_disk(f"paths.{key}", Path(str(value))) for key, value in paths.items()]


def _disk(label: str, path: Path) -> Disk:
    checked = path.absolute()
    while not checked.exists() and checked != checked.parent:
        checked = checked.parent
    free = shutil.disk_usage(checked).free / 1e9
    return Disk(label, str(path), str(checked), round(free, 1))


# ---------------------------------------------------------------------------------------------
# judgement


@dataclass
class Finding:
    level: Level
    title: str
    detail: str = ""
    fix: str | None = None


@dataclass(frozen=True)
class RunSettings:
    """The settings of the study's runs that decide what the hardware must do."""

    strategies: tuple[str, ...]
    device: str  # auto | cpu | cuda
    precision: str  # fp32 | bf16 | fp16


@dataclass
class StudyNeeds:
    runs: list[RunSettings] = field(default_factory=list)
    attention: dict[str, str] = field(default_factory=dict)  # model -> attn_implementation
    env: str | None = None


def study_needs(cfg: Mapping[str, Any] | None) -> StudyNeeds:
    """What the configured study asks of the environment; without a config, a default run."""
    if cfg is None:
        return StudyNeeds([RunSettings(("(no config)",), "auto", "fp32")])
    study = cfg["study"]
    strategies = list(study["strategies"])
    models = {m: cfg["models"][m] for m in study["models"]}
    # A model's pretraining run uses its own strategy's settings.
    for model in models.values():
        pretrain = model.get("pretrain")
        if pretrain and pretrain["strategy"] not in strategies:
            strategies.append(pretrain["strategy"])
    grouped: dict[tuple[str, str], list[str]] = {}
    for name in strategies:
        settings = training_settings(cfg, name)
        grouped.setdefault((settings["device"], settings["precision"]), []).append(name)
    return StudyNeeds(
        runs=[RunSettings(tuple(names), dev, prec) for (dev, prec), names in grouped.items()],
        attention={m: model.get("attn_implementation", "eager") for m, model in models.items()},
        env=cfg.get("env"),
    )


def diagnose(facts: Facts, cfg: Mapping[str, Any] | None) -> list[Finding]:
    """Judge the facts against the configured study (``None``: the environment alone)."""
    needs = study_needs(cfg)
    findings: list[Finding] = []
    for check in CHECKS:
        findings.extend(check(facts, needs))
    return findings


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.level == "error" for f in findings)


def parse_version(text: str | None) -> Version:
    """A version by packaging's rules ("2.13.0+cpu", "12.1"); 0 when absent or unparsable."""
    try:
        return Version(text or "0")
    except InvalidVersion:
        return Version("0")


def release(text: str | None) -> tuple[int, ...]:
    """The release numbers of a version: "12.1" -> (12, 1); () when absent."""
    return parse_version(text).release if text else ()


def driver_cuda(version: int) -> tuple[int, int]:
    """cuDriverGetVersion's integer as (major, minor): 12040 -> (12, 4)."""
    return version // 1000, version % 1000 // 10


def _fmt_cc(capability: tuple[int, int]) -> str:
    return f"{capability[0]}.{capability[1]}"


def _names(run: RunSettings) -> str:
    return ", ".join(run.strategies)


def _uses_gpu(facts: Facts, run: RunSettings) -> bool:
    # "auto" on a machine with GPUs means the GPU was meant; falling back to the CPU would
    # turn hours into days without a word.
    return run.device == "cuda" or (run.device == "auto" and bool(facts.gpus or facts.driver_gpus))


def _study_uses_gpu(facts: Facts, needs: StudyNeeds) -> bool:
    return any(_uses_gpu(facts, run) for run in needs.runs)


def _break_level(facts: Facts, needs: StudyNeeds) -> Level:
    """A GPU problem breaks the study only when the study runs on the GPU."""
    return "error" if _study_uses_gpu(facts, needs) else "warn"


def check_torch(facts: Facts, needs: StudyNeeds) -> list[Finding]:
    if facts.torch_error:
        return [
            Finding(
                "error",
                "torch does not import",
                facts.torch_error,
                "reinstall the pinned environment: bash envs/install.sh (or: legacy)",
            )
        ]
    findings = []
    if parse_version(facts.torch) < Version("2.6"):
        findings.append(
            Finding(
                "warn",
                f"torch {facts.torch} < 2.6: torch.load unpickles arbitrary code by default",
                "weights_only=True became the default in torch 2.6. audiopetl always passes it; "
                "other code loading .pt/.bin files in this environment may not.",
                "load only files you trust, or pass weights_only=True yourself",
            )
        )
    if parse_version(facts.torch) < Version("2.3") and parse_version(facts.numpy) >= Version("2"):
        findings.append(
            Finding(
                "error",
                f"numpy {facts.numpy} with torch {facts.torch}",
                "torch before 2.3 was built against numpy 1.x: torch.from_numpy and tensors "
                "made from arrays fail under numpy 2",
                'pip install "numpy<2"',
            )
        )
    return findings


def _torchaudio_fix(facts: Facts) -> str:
    return (
        "pip uninstall torchaudio (audiopetl does not need it), or install the torchaudio "
        f"build made for torch {facts.torch} (same release, same CUDA or CPU variant)"
    )


def check_torchaudio(facts: Facts, needs: StudyNeeds) -> list[Finding]:
    if facts.torchaudio is None:
        return [Finding("ok", "torchaudio not installed (audiopetl does not need it)")]
    check = facts.imports.get("torchaudio")
    if check is None or check.ok:
        return [Finding("ok", f"torchaudio {facts.torchaudio} imports")]
    return [
        Finding(
            "error",
            f"torchaudio {facts.torchaudio} is installed but does not import",
            f"{check.error}. transformers' audio models and peft import it when they see it "
            "installed (their own checks follow).",
            _torchaudio_fix(facts),
        )
    ]


def _library_import(facts: Facts, name: str, what: str) -> list[Finding]:
    version = getattr(facts, name)
    check = facts.imports.get(name)
    if version is None:
        return [Finding("error", f"{name} is not installed", fix="bash envs/install.sh")]
    if check is None or check.ok:
        return [Finding("ok", f"{name} {version}: {what} imports")]
    because_torchaudio = "torchaudio" in (check.traceback or "")
    detail = check.error or ""
    if because_torchaudio:
        detail += " (the traceback runs through torchaudio)"
    fix = _torchaudio_fix(facts) if because_torchaudio else "bash envs/install.sh (or: legacy)"
    return [Finding("error", f"{name} {version}: {what} does not import", detail, fix)]


def check_transformers(facts: Facts, needs: StudyNeeds) -> list[Finding]:
    findings = _library_import(facts, "transformers", "AST")
    version = parse_version(facts.transformers)
    if facts.transformers and version >= Version("4.36"):
        findings.append(
            Finding(
                "ok",
                f"transformers {facts.transformers} >= 4.36: nn.init does nothing while "
                "from_pretrained builds a model",
                "Modules created during loading that the checkpoint lacks (a new head, adapters "
                "built in a model's __init__) get only transformers' own initialisation, if "
                "any. audiopetl initialises its head and LoRA layers explicitly; code of your "
                "own must too.",
            )
        )
    if facts.transformers and version < Version("4.36"):
        for model, attn in needs.attention.items():
            if attn != "eager":
                findings.append(
                    Finding(
                        "warn",
                        f"models.{model}.attn_implementation {attn} needs transformers >= 4.36",
                        f"transformers {facts.transformers} has eager attention only; the runs "
                        "use eager (same results, slower) and run.json records it",
                        f"set models.{model}.attn_implementation: eager to silence this",
                    )
                )
    return findings


def check_peft(facts: Facts, needs: StudyNeeds) -> list[Finding]:
    return _library_import(facts, "peft", "LoRA")


def check_pkg_resources(facts: Facts, needs: StudyNeeds) -> list[Finding]:
    check = facts.imports.get("pkg_resources")
    if not facts.needs_pkg_resources or check is None or check.ok:
        return []
    packages = ", ".join(f"{n} {v}" for n, v in facts.needs_pkg_resources.items())
    upgrades = " ".join(f'"{n}>={NEEDS_PKG_RESOURCES[n]}"' for n in facts.needs_pkg_resources)
    return [
        Finding(
            "error",
            f"{packages} import pkg_resources, which setuptools {facts.setuptools} lacks",
            "setuptools 82 removed pkg_resources; these packages fail on import.",
            f"pip install {upgrades}, or pip install 'setuptools<82'",
        )
    ]


def check_devices(facts: Facts, needs: StudyNeeds) -> list[Finding]:
    findings = []
    for run in needs.runs:
        names = _names(run)
        if run.device == "cuda" and not facts.gpus:
            findings.append(
                Finding(
                    "error",
                    f"training.device is cuda ({names}) but torch sees no GPU",
                    _why_no_gpu(facts),
                    "run on a GPU node, install a CUDA build of torch, or set "
                    "training.device: auto",
                )
            )
        on_cpu = run.device == "cpu" or (run.device == "auto" and not facts.gpus)
        if run.precision == "fp16" and on_cpu:
            findings.append(
                Finding(
                    "error",
                    f"training.precision fp16 ({names}) on the CPU",
                    "fp16 autocast with loss scaling needs a CUDA device; training refuses it",
                    "set training.precision: bf16 or fp32 for CPU runs",
                )
            )
        if run.precision == "bf16" and _uses_gpu(facts, run):
            findings.extend(_bf16_findings(facts, run))
    return findings + _unused_gpus(facts, needs)


def _unused_gpus(facts: Facts, needs: StudyNeeds) -> list[Finding]:
    """GPUs the driver reports but torch cannot use: ``auto`` would train on the CPU unasked."""
    if facts.gpus or not facts.driver_gpus or facts.torch_error:
        return []
    if any(run.device == "cuda" for run in needs.runs):
        return []  # reported as training.device cuda without a GPU
    count = f"{len(facts.driver_gpus)} GPU{'s' if len(facts.driver_gpus) > 1 else ''}"
    if facts.torch_cuda is None:
        # Perhaps deliberate, and the study runs: a warning.
        return [
            Finding(
                "warn",
                f"a CPU build of torch ({facts.torch}) on a machine with {count}",
                "training.device auto runs on the CPU here",
                "install a CUDA build of torch (https://pytorch.org/get-started/locally/)",
            )
        ]
    if _driver_too_old(facts):
        return []  # the driver check explains it
    return [
        Finding(
            _break_level(facts, needs),
            f"torch {facts.torch} cannot use the {count} the driver reports",
            _why_no_gpu(facts),
            "check CUDA_VISIBLE_DEVICES and that the GPU is free of other jobs and MIG limits; "
            "otherwise reinstall torch for this driver",
        )
    ]


def _driver_too_old(facts: Facts) -> bool:
    """The driver's CUDA major version is older than torch's: torch sees no GPU at all."""
    if facts.driver_version is None or facts.torch_cuda is None:
        return False
    return release(facts.torch_cuda)[:1] > driver_cuda(facts.driver_version)[:1]


def _why_no_gpu(facts: Facts) -> str:
    if facts.torch_cuda is None:
        return f"torch {facts.torch} is a CPU build"
    if facts.driver_version is None:
        return "no CUDA driver (libcuda.so.1) on this machine"
    if facts.torch_cuda_error:
        return f"torch says: {facts.torch_cuda_error}"
    return "torch.cuda.is_available() is False (CUDA_VISIBLE_DEVICES?)"


def _bf16_findings(facts: Facts, run: RunSettings) -> list[Finding]:
    findings = []
    for gpu in facts.gpus:
        if not gpu.bf16:
            findings.append(
                Finding(
                    "error",
                    f"training.precision bf16 ({_names(run)}) on GPU {gpu.index} {gpu.name} "
                    f"(compute capability {_fmt_cc(gpu.capability)}), which lacks bf16",
                    f"torch {facts.torch}'s autocast refuses bfloat16 on this GPU; native "
                    "bf16 starts at compute capability 8.0",
                    "set training.precision: fp16 (or fp32)",
                )
            )
        elif gpu.capability < (8, 0):
            findings.append(
                Finding(
                    "warn",
                    f"bf16 on GPU {gpu.index} {gpu.name} is emulated",
                    f"compute capability {_fmt_cc(gpu.capability)} has no bf16 units; torch "
                    "emulates it at a fraction of the speed",
                    "set training.precision: fp16 on this GPU",
                )
            )
    return findings


def has_kernels(capability: tuple[int, int], arch_list: Iterable[str]) -> bool:
    """Whether a torch built for ``arch_list`` has kernels that run on this GPU.

    Binary kernels (``sm_XY``) run on GPUs of the same major version and an equal or newer
    minor one; PTX (``compute_XY``) is compiled by the driver for any GPU at least as new.
    Architecture-specific suffixes (``sm_90a``) are read as their base number.
    """
    device = capability[0] * 10 + capability[1]
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        digits = re.match(r"\d+", number)
        if digits is None:
            continue
        code = int(digits.group())
        if kind == "sm" and code // 10 == device // 10 and code <= device:
            return True
        if kind == "compute" and code <= device:
            return True
    return False


def check_kernels(facts: Facts, needs: StudyNeeds) -> list[Finding]:
    # ROCm builds list gfx targets and check them themselves; an empty list tells nothing.
    if facts.torch_hip or not facts.arch_list:
        return []
    level = _break_level(facts, needs)
    findings = []
    for gpu in facts.gpus:
        if has_kernels(gpu.capability, facts.arch_list):
            continue
        findings.append(
            Finding(
                level,
                f"torch {facts.torch} has no kernels for GPU {gpu.index} {gpu.name} "
                f"(compute capability {_fmt_cc(gpu.capability)})",
                f"it was built for {' '.join(facts.arch_list)}; every CUDA operation fails "
                "with 'no kernel image is available for execution on the device'",
                "install a torch built for this GPU (torch >= 2.0 with CUDA >= 11.8 for "
                "compute capability 9.0), e.g. the modern environment: bash envs/install.sh",
            )
        )
    return findings


def check_driver(facts: Facts, needs: StudyNeeds) -> list[Finding]:
    if facts.driver_version is None or facts.torch_cuda is None:
        return []
    driver = driver_cuda(facts.driver_version)
    built = release(facts.torch_cuda)[:2]
    driver_text = f"{driver[0]}.{driver[1]}"
    if built <= driver:
        return [Finding("ok", f"driver's CUDA {driver_text} >= torch's CUDA {facts.torch_cuda}")]
    title = (
        f"torch {facts.torch} is built for CUDA {facts.torch_cuda}, newer than the driver's "
        f"CUDA {driver_text}"
    )
    fix = (
        f"upgrade the NVIDIA driver, or install a torch built for CUDA <= {driver_text} "
        "(the cuXYZ index at https://download.pytorch.org/whl/)"
    )
    if _driver_too_old(facts):
        detail = "torch then sees no GPU at all (torch.cuda.is_available() is False)"
        return [Finding(_break_level(facts, needs), title, detail, fix)]
    # Same major version: CUDA's minor version compatibility runs torch's prebuilt kernels,
    # but anything compiled from PTX at run time needs the newer driver.
    detail = "CUDA minor version compatibility covers torch's prebuilt kernels, not PTX JIT"
    return [Finding("warn", title, detail, fix)]


def check_disk(facts: Facts, needs: StudyNeeds) -> list[Finding]:
    findings = []
    for disk in facts.disks:
        if disk.free_gb < LOW_DISK_GB:
            findings.append(
                Finding(
                    "warn",
                    f"only {disk.free_gb:.1f} GB free for {disk.label} ({disk.path})",
                    "feature caches and checkpoints of a real study need several GB",
                    f"free space on {disk.checked} or point {disk.label} elsewhere",
                )
            )
    return findings


def check_environment(facts: Facts, needs: StudyNeeds) -> list[Finding]:
    if needs.env is None or needs.env == facts.environment or facts.environment == "unknown":
        return []
    return [
        Finding(
            "warn",
            f"the config asks for the {needs.env} environment; this is {facts.environment}",
            "results record the environment they ran in, so mixing them mixes the comparison",
            f"run from the {needs.env} environment (bash envs/install.sh {needs.env}), "
            "or let Snakemake pick it with --sdm conda",
        )
    ]


CHECKS: list[Callable[[Facts, StudyNeeds], list[Finding]]] = [
    check_torch,
    check_torchaudio,
    check_transformers,
    check_peft,
    check_pkg_resources,
    check_devices,
    check_kernels,
    check_driver,
    check_disk,
    check_environment,
]


# ---------------------------------------------------------------------------------------------
# report

MARKS = {"ok": "[ok]  ", "warn": "[warn]", "error": "[FAIL]"}


def _installed_rows(facts: Facts) -> list[tuple[str, str]]:
    torch = facts.torch or "not installed"
    if facts.torch_error:
        torch += f" (import fails: {facts.torch_error})"
    elif facts.torch_hip:
        torch += f" (ROCm {facts.torch_hip})"
    else:
        torch += f" (CUDA {facts.torch_cuda})" if facts.torch_cuda else " (CPU build)"
    rows = [
        ("environment", f"{facts.environment} ({facts.executable})"),
        ("python", facts.python),
        ("torch", torch),
        ("torch kernels", " ".join(facts.arch_list) or "-"),
        ("CUDA driver", _driver_text(facts)),
        ("transformers", facts.transformers or "not installed"),
        ("peft", facts.peft or "not installed"),
        ("torchaudio", _torchaudio_text(facts)),
        ("numpy", facts.numpy or "not installed"),
        ("setuptools", _setuptools_text(facts)),
    ]
    rows += [("GPU", text) for text in _gpu_texts(facts)]
    rows += [
        ("free disk", f"{d.free_gb:.1f} GB for {d.label} ({d.path} -> {d.checked})")
        for d in facts.disks
    ]
    return rows


def _driver_text(facts: Facts) -> str:
    if facts.driver_version is None:
        return "none (no libcuda.so.1)"
    major, minor = driver_cuda(facts.driver_version)
    return f"CUDA {major}.{minor}"


def _torchaudio_text(facts: Facts) -> str:
    if facts.torchaudio is None:
        return "not installed"
    check = facts.imports.get("torchaudio")
    if check is not None and not check.ok:
        return f"{facts.torchaudio}, does not import: {check.error}"
    return facts.torchaudio


def _setuptools_text(facts: Facts) -> str:
    check = facts.imports.get("pkg_resources")
    if facts.setuptools is None:
        return "not installed"
    if check is not None and not check.ok:
        return f"{facts.setuptools} (no pkg_resources)"
    return f"{facts.setuptools} (with pkg_resources)"


def _gpu_texts(facts: Facts) -> list[str]:
    if facts.gpus:
        return [
            f"{g.index}: {g.name}, compute capability {_fmt_cc(g.capability)}, "
            f"{g.memory_gb:g} GB, bf16 {'yes' if g.bf16 else 'no'}"
            for g in facts.gpus
        ]
    if facts.driver_gpus:
        return [
            f"{g.name}, compute capability {_fmt_cc(g.capability)} (driver only: "
            "torch cannot use it)"
            for g in facts.driver_gpus
        ]
    return ["none"]


def format_report(facts: Facts, findings: list[Finding]) -> str:
    width = max(len(label) for label, _ in _installed_rows(facts))
    lines = ["Installed"]
    lines += [f"  {label:<{width}}  {value}" for label, value in _installed_rows(facts)]
    lines += ["", f"Checks{f' ({facts.config})' if facts.config else ''}"]
    wrap = textwrap.TextWrapper(width=100, initial_indent=" " * 11, subsequent_indent=" " * 11)
    for finding in findings:
        lines.append(f"  {MARKS[finding.level]} {finding.title}")
        # Line by line: a configuration error lists one problem per line.
        for paragraph in finding.detail.splitlines():
            lines += wrap.wrap(paragraph.strip())
        if finding.fix:
            lines += wrap.wrap(f"fix: {finding.fix}")
    errors = sum(f.level == "error" for f in findings)
    warnings = sum(f.level == "warn" for f in findings)
    lines += ["", _summary(errors, warnings)]
    return "\n".join(lines)


def _summary(errors: int, warnings: int) -> str:
    def count(n: int, noun: str) -> str:
        return f"{n} {noun}{'' if n == 1 else 's'}"

    if errors:
        return f"{count(errors, 'problem')} would break the study; {count(warnings, 'warning')}."
    return f"No problem would break the study; {count(warnings, 'warning')}."


# ---------------------------------------------------------------------------------------------
# command line


def cmd_doctor(args: argparse.Namespace) -> int:
    cfg, config_findings, source = load_study(args)
    facts = gather(cfg, source)
    findings = config_findings + diagnose(facts, cfg)
    print(format_report(facts, findings))
    if args.json:
        from audiopetl.core.atomic import write_json

        write_json(
            args.json,
            {
                "ok": not has_errors(findings),
                "facts": facts.to_dict(),
                "findings": [dataclasses.asdict(f) for f in findings],
            },
        )
    return 1 if has_errors(findings) else 0


def load_study(args: argparse.Namespace) -> tuple[dict[str, Any] | None, list[Finding], str]:
    """The configuration, or the finding that says why there is none.

    A broken configuration must not hide the environment report: the doctor goes on without it.
    """
    config = Path(args.config) if args.config is not None else DEFAULT_CONFIG
    if (
        config == DEFAULT_CONFIG
        and not config.is_file()
        and not (args.experiment or args.overrides)
    ):
        note = Finding(
            "warn",
            f"no {DEFAULT_CONFIG} here: checked the environment only",
            fix="run in a project folder, or name a configuration with --config",
        )
        return None, [note], "no configuration"
    try:
        cfg = load_config(config, args.experiment, args.overrides)
    except ConfigError as err:
        finding = Finding(
            "error", "the configuration does not load", str(err), "correct the named key"
        )
        return None, [finding], f"{config}: does not load"
    return cfg, [], f"{config}, experiment {cfg['experiment']}"


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "doctor",
        cmd_doctor,
        "what is installed, and the known traps that would break the configured study "
        "(exit 1 when one would)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write facts and findings here")
