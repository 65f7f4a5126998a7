"""Errors the CLI turns into a one-line message and a non-zero exit instead of a traceback."""


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the key path."""


class AudiopetlError(RuntimeError):
    """Base class: the message is for the user and names the file, key or step."""


class DataError(AudiopetlError):
    """Bad input data: a corrupt clip, a checksum mismatch, inconsistent metadata."""


class TrainingError(AudiopetlError):
    """A run that must stop: a non-finite loss, a misconfigured strategy, a failed guard."""


class Stopped(Exception):
    """A planned stop: asked to stop before a time limit, the state saved, to be resumed.
    Not a failure; the exit status (75, EX_TEMPFAIL) tells a scheduler to try again."""

    code = 75
