"""User-facing errors.

Everything a user can get wrong (a model spec, a path, a sampling value, a device) raises a
subclass of :class:`GPT2XLError` whose message is one complete sentence that says what to do.
The CLI prints that sentence and exits non-zero; it never shows a traceback for these.
Programming errors are left as ordinary exceptions.
"""


class GPT2XLError(Exception):
    """Base class: the message is meant for the user, as is."""


class ConfigError(GPT2XLError, ValueError):
    """An invalid configuration or option value (bad sampling values, unknown preset, a
    malformed checkpoint config, a run too large for memory)."""


class WeightsError(GPT2XLError):
    """A model spec that cannot be turned into weights (unknown, missing, corrupt, offline)."""


class DeviceError(GPT2XLError):
    """A device or dtype this machine cannot run (no CUDA, fp16 where unsupported)."""


class TokenizerError(GPT2XLError):
    """The GPT-2 BPE ranks cannot be found or do not match their pinned checksums."""


class DataError(GPT2XLError):
    """A dataset that cannot be read from a directory nor loaded through `datasets`."""


class OutputError(GPT2XLError):
    """A file or directory that cannot be written: permission, no space, file size limit."""


class NumericalError(GPT2XLError):
    """The model produced NaN or inf (corrupt weights, or a dtype whose range was exceeded)."""


class ResultError(GPT2XLError):
    """A result file that cannot be read: missing, not JSON, or another schema version or kind."""

