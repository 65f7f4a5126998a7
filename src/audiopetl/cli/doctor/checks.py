"""What `audiopetl doctor` judges: the facts of a machine against what the configured study
needs. Testable with facts of machines we do not have (an H100 beside torch 1.13.1, an old
driver). Only a trap that would break the configured study is an error; a risk that does not
stop it is a warning."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from packaging.version import Version

from audiopetl.cli.doctor.facts import (
    LOW_DISK_GB,
    NEEDS_PKG_RESOURCES,
    Facts,
    Level,
    _fmt_cc,
    driver_cuda,
    parse_version,
    release,
)

if TYPE_CHECKING:
    from audiopetl.study import Study


@dataclass
class Finding:
    level: Level
    title: str
    detail: str = ""
    fix: str | None = None


@dataclass(frozen=True)
class RunNeeds:
    """The settings of the study's runs that decide what the hardware must do."""

    strategies: tuple[str, ...]
    device: str  # auto | cpu | cuda | mps
    precision: str  # fp32 | bf16 | fp16


@dataclass
class StudyNeeds:
    runs: list[RunNeeds] = field(default_factory=list)
    attention: dict[str, str] = field(default_factory=dict)  # model -> attn_implementation
    env: str | None = None


def study_needs(study: Study | None) -> StudyNeeds:
    """What the configured study asks of the environment; without a config, a default run."""
    if study is None:
        return StudyNeeds([RunNeeds(("(no config)",), "auto", "fp32")])
    matrix = study.config["study"]
    strategies = list(matrix["strategies"])
    models = {m: study.model(m) for m in matrix["models"]}
    # A model's pretraining run uses its own strategy's settings.
    for model in models.values():
        if model.pretrain and model.pretrain.strategy not in strategies:
            strategies.append(model.pretrain.strategy)
    grouped: dict[tuple[str, str], list[str]] = {}
    for name in strategies:
        settings = study.training(name)
        grouped.setdefault((settings.device, settings.precision), []).append(name)
    return StudyNeeds(
        runs=[RunNeeds(tuple(names), dev, prec) for (dev, prec), names in grouped.items()],
        attention={m: model.attn_implementation for m, model in models.items()},
        env=study.config.get("env"),
    )


def diagnose(facts: Facts, study: Study | None) -> list[Finding]:
    """Judge the facts against the configured study (``None``: the environment alone)."""
    needs = study_needs(study)
    findings: list[Finding] = []
    for check in CHECKS:
        findings.extend(check(facts, needs))
    return findings


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.level == "error" for f in findings)


def _names(run: RunNeeds) -> str:
    return ", ".join(run.strategies)


def _uses_gpu(facts: Facts, run: RunNeeds) -> bool:
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


def _bf16_findings(facts: Facts, run: RunNeeds) -> list[Finding]:
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
