"""Run one DVC stage of dvc.yaml: Snakemake on the jobs of some rules of the workflow.

The training stage, for instance, runs ``python workflow/dvc_stage.py --experiment quick
--rules pretrain train --omit-from report``.

Snakemake stays the one DAG and decides which jobs run. DVC keeps a stage's finished runs in
place (``persist``) and Snakemake reruns only the jobs whose settings, inputs or command
changed, which it knows from the records it keeps under ``.snakemake/``. Outputs that DVC
restored (``dvc pull``, ``dvc checkout``, a queued ``dvc exp run``) come without such records,
so Snakemake could not tell that they were made with other settings and would keep them. This
script checks for that with a dry run first and reruns the stage's rules whose outputs have no
record: slower, never stale. ``dvc status --quiet && snakemake --cores 1 --touch --forceall``
right after ``dvc pull`` or ``dvc checkout`` records them instead (README, "Versioning with
DVC").
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

# Where dvc.yaml expects the study's files: config paths.data and paths.results as shipped.
DVC_PATHS = {"data": "data", "results": "results"}
# Snakemake's own summary of jobs it keeps without any record of how they were made.
MISSING_METADATA = re.compile(r"^Rules with missing metadata: (.+)$", re.MULTILINE)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, help="the preset the study runs")
    parser.add_argument("--rules", nargs="+", required=True, help="the rules of this stage")
    parser.add_argument(
        "--omit-from",
        nargs="+",
        default=[],
        help="rules (with everything downstream) that belong to later stages",
    )
    parser.add_argument("--cores", default="all", help="as Snakemake's --cores (default: all)")
    return parser.parse_args(argv)


def snakemake_command(args: argparse.Namespace) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--config",
        f"experiment={args.experiment}",
        "--cores",
        args.cores,
        "--rerun-incomplete",
    ]
    if args.omit_from:
        command += ["--omit-from", *args.omit_from]
    return command


def rules_without_records(command: list[str], rules: list[str]) -> list[str]:
    """The stage's rules with finished jobs that Snakemake holds no record of."""
    dry = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, check=False)
    if dry.returncode != 0:
        sys.stderr.write(dry.stdout + dry.stderr)
        raise SystemExit(dry.returncode)
    found = MISSING_METADATA.search(dry.stdout + dry.stderr)
    unrecorded = set(found.group(1).split()) if found else set()
    return [rule for rule in rules if rule in unrecorded]


def check_paths(experiment: str, config_file: str = "config/config.yaml") -> None:
    """dvc.yaml names its outputs under data/ and results/; a configuration that writes
    elsewhere would leave DVC recording folders that the study never touched."""
    from audiopetl.core.errors import AudiopetlError, ConfigError
    from audiopetl.study import load_study

    try:
        paths = load_study(config_file, experiment).config["paths"]
    except (ConfigError, AudiopetlError) as err:  # names its file and key: say just that
        raise SystemExit(f"dvc_stage: {err}") from None
    moved = {key: paths[key] for key, default in DVC_PATHS.items() if paths[key] != default}
    if moved:
        settings = ", ".join(f"paths.{key} = {value!r}" for key, value in moved.items())
        raise SystemExit(
            f"dvc_stage: {config_file} (experiment {experiment!r}) sets {settings}, but dvc.yaml "
            f"names its outputs under {' and '.join(f'{v}/' for v in DVC_PATHS.values())}: "
            "change the paths in dvc.yaml too, or run this study with Snakemake alone."
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_paths(args.experiment)
    command = snakemake_command(args)
    unrecorded = rules_without_records(command, args.rules)
    if unrecorded:
        print(
            f"dvc_stage: Snakemake has no record of how the outputs of {', '.join(unrecorded)} "
            "were made (restored by DVC?), so it reruns them. To keep results DVC restores, run "
            "`dvc status --quiet && snakemake --cores 1 --touch --forceall` right after "
            "`dvc pull` or `dvc checkout`.",
            file=sys.stderr,
            flush=True,
        )
        command += ["--forcerun", *unrecorded]
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
