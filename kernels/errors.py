"""The two ways a kernel call fails before it runs.

`KernelInputError` is the caller's fault (a wrong dtype, rank, layout or size) and names the
argument; a server maps it to INVALID_ARGUMENT. `ProviderUnavailable` says why a requested
implementation cannot run here (a missing package, no GPU) and lists what is registered.
"""

from __future__ import annotations


class KernelInputError(ValueError):
    """An argument a kernel cannot take; `argument` names it."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}")
        self.argument = argument


class ProviderUnavailable(RuntimeError):
    """The requested provider is unknown, or cannot run on this machine or device."""
