"""`audiopetl doctor`: what is installed, and the known traps that would break the study.

Gathering and judging are separate: :func:`gather` looks at this machine and this Python
(versions, imports tried in subprocesses, GPUs, the CUDA driver, free disk) and returns plain
:class:`Facts`; :func:`diagnose` judges facts against a configuration and returns findings.
The judgement is therefore testable with facts of machines we do not have (an H100 beside
torch 1.13.1, an old driver), and the gathering is tested on the machine at hand.

Only a trap that would break the configured study is an error (non-zero exit); a risk that
does not stop it is a warning.

The command is here; the gathering in :mod:`.facts`, the judgement in :mod:`.checks`, the
report in :mod:`.report`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from audiopetl.cli.doctor.checks import Finding, diagnose, has_errors
from audiopetl.cli.doctor.facts import gather
from audiopetl.cli.doctor.report import format_report
from audiopetl.core.config import DEFAULT_CONFIG
from audiopetl.core.errors import ConfigError

if TYPE_CHECKING:
    from audiopetl.study import Study


def cmd_doctor(args: argparse.Namespace) -> int:
    study, config_findings, source = load_study(args)
    facts = gather(study.config if study is not None else None, source)
    findings = config_findings + diagnose(facts, study)
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


def load_study(args: argparse.Namespace) -> tuple[Study | None, list[Finding], str]:
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
    from audiopetl.study import load_study as load

    try:
        study = load(config, args.experiment, args.overrides)
    except ConfigError as err:
        finding = Finding(
            "error", "the configuration does not load", str(err), "correct the named key"
        )
        return None, [finding], f"{config}: does not load"
    return study, [], f"{config}, experiment {study.name}"


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "doctor",
        cmd_doctor,
        "what is installed, and the known traps that would break the configured study "
        "(exit 1 when one would)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write facts and findings here")
