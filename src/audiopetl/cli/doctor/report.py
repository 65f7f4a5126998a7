"""The doctor's report: what is installed, then each check's finding with its fix."""

from __future__ import annotations

import textwrap

from audiopetl.cli.doctor.checks import Finding
from audiopetl.cli.doctor.facts import Facts, _fmt_cc, driver_cuda

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
