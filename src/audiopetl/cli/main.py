"""The one command-line entry point: every Snakemake rule and DVC stage calls a subcommand here.

Each subcommand resolves the configuration the same way (config file -> experiment preset ->
``--set`` overrides) and fails with one clear line and a non-zero exit on bad input.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from audiopetl.cli.common import common_options, progress, resolve_config_args
from audiopetl.core.config import ConfigError
from audiopetl.core.errors import AudiopetlError, Stopped
from audiopetl.process import timings, warm

log = logging.getLogger("audiopetl")

EXIT_ERROR = 1
EXIT_CONFIG = 2
# What a warm server imports before it forks: every command's heavy dependencies.
WARM_PRELOAD = (
    "audiopetl.cli.train",
    "audiopetl.cli.data",
    "audiopetl.training.run",
    "audiopetl.training.evaluate",
    "audiopetl.inference.predict",
    "audiopetl.features.cache",
    "audiopetl.study",
    "audiopetl.report",
    "peft",
    "transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiopetl",
        description="Reproducible parameter-efficient transfer learning for audio models.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str):
        p = sub.add_parser(name, help=help_text, description=help_text)
        common_options(p)
        p.set_defaults(func=func)
        return p

    from audiopetl.cli import data as cli_data

    cli_data.register(add)
    from audiopetl.cli import train as cli_train

    cli_train.register(add)
    from audiopetl.cli import infer as cli_infer

    cli_infer.register(add)
    from audiopetl.cli import doctor

    doctor.register(add)
    return parser


def _quiet_library_progress() -> None:
    """No library progress bars in logs (SLURM files, Snakemake logs): they are noise there."""
    # Read by huggingface_hub, whose switch transformers' own bars follow; set before import.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Imported already (a warm-started command, audiopetl.process.warm): switched off at run time.
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()


def _version() -> str:
    from audiopetl import __version__

    return f"audiopetl {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    timings.mark("main")
    # Our own messages at INFO; libraries (fontTools, matplotlib, ...) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    job_log = None
    if getattr(args, "log", None):
        from audiopetl.process.joblog import JobLog

        job_log = JobLog(Path(args.log), args.command)
    if hasattr(args, "config"):
        resolve_config_args(args)
    if not progress(args):
        _quiet_library_progress()
    try:
        code, line = _run(args)
    except Exception as err:  # a bug: its traceback goes to the log, its name to stderr too
        if job_log is not None:
            job_log.end(1, f"audiopetl {args.command}: internal error (a bug, traceback in "
                           f"{args.log}): {type(err).__name__}: {err}")  # fmt: skip
        raise
    if job_log is not None:
        job_log.end(code, line)
    elif line:
        print(line, file=sys.stderr)
    timings.append_record(args.command, code)
    return code


def entry() -> NoReturn:
    """The `audiopetl` command: :func:`main`, then a quick exit.

    Tearing down an interpreter that imported torch and transformers takes ~1.4 s (2 cores),
    every workflow job pays it, and it does nothing our outputs need: everything is written
    and closed before main returns. So streams and logging are flushed, atexit handlers run,
    and the process ends with os._exit. A bug's exception takes the normal path (traceback).
    """
    code: int | str | None = None
    if warm.wanted():  # in a fork of a process that imported everything already
        code = warm.run(sys.argv[1:], f"{__name__}:served", WARM_PRELOAD)
    if code is None:
        code = status()
    os._exit(finish(code))


def served(argv: Sequence[str]) -> int:
    """A command run in a warm server's child (audiopetl.process.warm): its exit status."""
    return finish(status(argv))


def status(argv: Sequence[str] | None = None) -> int | str | None:
    """:func:`main`'s exit status, also where argparse exits (--help, --version, a usage
    error) instead of returning one."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code  # type: ignore[return-value]


def finish(code: int | str | None) -> int:
    """Flush what the process wrote, run its atexit handlers; the exit status to end with."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe: nothing more can reach it.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    logging.shutdown()
    atexit._run_exitfuncs()
    return code or 0


def _run(args: argparse.Namespace) -> tuple[int, str | None]:
    """The command's exit status, and the one line that says why it failed."""
    try:
        return int(args.func(args) or 0), None
    except ConfigError as err:
        if args.debug:
            raise
        return EXIT_CONFIG, f"audiopetl {args.command}: config error: {err}"
    except AudiopetlError as err:
        if args.debug:
            raise
        return EXIT_ERROR, f"audiopetl {args.command}: error: {err}"
    except OSError as err:  # the machine's: a full disk, a read-only folder, a missing file
        if args.debug:
            raise
        from audiopetl.core.failures import one_line

        return EXIT_ERROR, f"audiopetl {args.command}: error: {one_line(err)}"
    except Stopped as stop:  # a planned stop before a time limit, not a failure
        return stop.code, f"audiopetl {args.command}: {stop}"
