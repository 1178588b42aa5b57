"""Exceptions raised by gpart_edu.

Every error names what is wrong and how to fix it. The classes subclass the built-in
``ValueError`` / ``TypeError`` so that generic ``except ValueError`` code keeps working.
Taught in notebooks/00_quickstart.ipynb (errors name their fix; docs/errors.md).
"""


class GPartEduError(Exception):
    """Base class of every error raised on purpose by gpart_edu."""


class ConfigError(GPartEduError, ValueError):
    """A method or projection was configured with an invalid value (d, r, alpha, ...)."""


class TargetError(GPartEduError, ValueError):
    """The requested target layers do not exist or cannot be adapted."""


class AttachError(GPartEduError, ValueError):
    """Attaching or detaching an adapter is not possible in the model's current state."""


class AdapterFileError(GPartEduError, ValueError):
    """An adapter file is unreadable, corrupted, or does not match the model."""


class UnsupportedLayerError(GPartEduError, TypeError):
    """A matched target module is of a type the adapters cannot wrap."""


class UnsupportedMethodError(GPartEduError, TypeError):
    """A PEFT method (or one of its options) whose map theta -> Delta W the audit cannot derive and check."""
