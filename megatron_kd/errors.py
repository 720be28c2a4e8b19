"""User-facing errors: each one is printed by the CLI as a single line (what is wrong, where,
how to fix it) and turns into a non-zero exit, without a traceback unless --debug."""


class MKDError(Exception):
    """Base class for errors the user can fix; the message is the whole story."""

    exit_code = 2


class ConfigError(MKDError):
    """A recipe or override is invalid (unknown key, wrong type, impossible combination)."""


class SetupError(MKDError):
    """The environment cannot run what was asked (missing package, wrong version, no GPU)."""

    exit_code = 3
