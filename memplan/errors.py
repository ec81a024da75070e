"""Error types that the command line turns into one line on stderr and an exit code."""

from __future__ import annotations


class MemplanError(Exception):
    """Any error memplan reports to a user; `exit_code` is the command-line exit status."""

    exit_code = 1


class SizeError(MemplanError, ValueError):
    """A byte size that cannot be parsed (``"64XB"``, ``"-5MB"``, ``"nan"``)."""


class SpecError(MemplanError, ValueError):
    """A method spec string with an unknown method, option or option value."""


class LayoutError(MemplanError, ValueError):
    """A state layout that does not fit its parameter (e.g. a tensor index whose product is not numel)."""


class SourceError(MemplanError):
    """A model source that cannot be read: missing file, unsafe pickle, ambiguous model, ..."""


class ProfileError(MemplanError):
    """A profile document that is malformed or inconsistent."""


class PlanError(ProfileError):
    """A plan that is malformed, inconsistent, or made for another model."""


class OutputError(MemplanError, OSError):
    """A file memplan was asked to write that cannot be written (a read-only folder, a parent
    path that is a file, a target that is a folder)."""


class BudgetError(MemplanError):
    """No choice of optimizer state fits the byte budget; ``minimum_bytes`` is the smallest that does."""

    exit_code = 3

    def __init__(self, message: str, minimum_bytes: int | None = None) -> None:
        super().__init__(message)
        self.minimum_bytes = minimum_bytes


class UsageError(MemplanError, ValueError):
    """Options that do not go together (e.g. ``--entry`` with a checkpoint)."""

    exit_code = 2


class DeviceError(MemplanError):
    """A device that is not available here, or a device name memplan does not understand."""


class UnknownDeviceError(DeviceError, UsageError):
    """A device name memplan does not understand (``tpu``, ``cuda:x``): a usage error (exit 2)."""


class AssumptionWarning(UserWarning):
    """Something memplan assumed while reading a source (a default dtype, a substitute class); the
    command line prints it as one ``memplan: note:`` line on stderr."""
