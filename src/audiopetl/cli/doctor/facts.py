"""What `audiopetl doctor` finds on this machine and in this Python: versions, imports tried
in fresh interpreters, GPUs, the CUDA driver, free disk. Plain :class:`Facts`, judged by
:mod:`audiopetl.cli.doctor.checks`."""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from packaging.version import InvalidVersion, Version

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
