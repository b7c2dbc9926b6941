"""User-facing errors.

Every problem a user can fix (a missing file, a malformed annotation, an unknown config key, a
checkpoint that does not fit the model) raises a subclass of :class:`MsadkitError` whose message
names the file, argument or key and says what is wrong. The command line prints that message
without a traceback and exits with status 2.
"""

__all__ = ["MsadkitError", "ConfigError", "DatasetError", "CheckpointError", "InputError"]


class MsadkitError(Exception):
    """Base class of every error a user can act on."""


class ConfigError(MsadkitError):
    """A config file, key or value is wrong."""


class DatasetError(MsadkitError):
    """A dataset folder, annotation file or image is missing or malformed."""


class CheckpointError(MsadkitError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


class InputError(MsadkitError):
    """A tensor given to a model is invalid (wrong shape, inf or NaN values)."""
