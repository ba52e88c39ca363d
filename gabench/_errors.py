"""Validation helpers shared by every public boundary.

Every check raises :class:`ConfigError`, whose message is one line naming the parameter, the
value given and what is allowed. The CLI prints that line and exits with status 2.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A parameter has a value that is not allowed.

    Args:
        param: Name of the parameter as the user wrote it (``alpha``, ``--shots``, ``family``).
        value: The value given.
        allowed: What would have been accepted, as a phrase ("a number > 0").
    """

    def __init__(self, param: str, value: Any, allowed: str) -> None:
        self.param = param
        self.value = value
        self.allowed = allowed
        super().__init__(f"{param}={value!r} is not allowed: expected {allowed}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its arguments when it crosses a process boundary (a pool worker's error
        # reaches the parent pickled; the default would call __init__ with the message only).
        return (type(self), (self.param, self.value, self.allowed))


def check_positive(param: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a finite float, > 0 (or >= 0 with ``allow_zero``)."""
    bound = ">= 0" if allow_zero else "> 0"
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(param, value, f"a finite number {bound}") from None
    if not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        raise ConfigError(param, value, f"a finite number {bound}")
    return x


def check_int(param: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Return ``value`` as an int in ``[minimum, maximum]``."""
    allowed = f"an integer >= {minimum}" if maximum is None else (
        f"an integer in [{minimum}, {maximum}]"
    )
    if isinstance(value, bool):
        raise ConfigError(param, value, allowed)
    try:
        x = int(value)
    except (TypeError, ValueError):
        raise ConfigError(param, value, allowed) from None
    if x != value and not (isinstance(value, str) and str(x) == value.strip()):
        raise ConfigError(param, value, allowed)
    if x < minimum or (maximum is not None and x > maximum):
        raise ConfigError(param, value, allowed)
    return x


def check_fraction(param: str, value: Any) -> float:
    """Return ``value`` as a float in ``[0, 1]``."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(param, value, "a number in [0, 1]") from None
    if not (0.0 <= x <= 1.0):
        raise ConfigError(param, value, "a number in [0, 1]")
    return x


def check_choice(param: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    options = list(choices)
    if value not in options:
        raise ConfigError(param, value, "one of " + ", ".join(options))
    return value


#: errno values of a write that failed because the disk (or the quota, or the file size limit)
#: is exhausted.
STORAGE_FULL: dict[int, str] = {errno.ENOSPC: "no space left on device",
                                errno.EDQUOT: "no space left on device (disk quota exceeded)",
                                errno.EFBIG: "no space left on device (file size limit reached)"}


def storage_full(exc: BaseException) -> str | None:
    """What ran out when ``exc`` (or an error it was raised from) is a full disk, quota or file
    size limit (``"no space left on device"``...), else None.

    Libraries that write files (pyarrow, SQLite) do not always keep the ``errno``: their messages
    are recognised too.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "errno", None)
        if isinstance(current, OSError) and code in STORAGE_FULL:
            return STORAGE_FULL[code]
        text = str(current).lower()
        if "no space left on device" in text or "database or disk is full" in text:
            return STORAGE_FULL[errno.ENOSPC]
        if "file too large" in text:
            return STORAGE_FULL[errno.EFBIG]
        current = current.__cause__ or current.__context__
    return None


class StorageFullError(OSError):
    """A write failed because the disk is full: one line naming the path (``PATH: no space left
    on device``). Whatever was finished before stays; rerun the command after freeing space.

    Args:
        path: What could not be written.
        what: What ran out (see :func:`storage_full`).
    """

    def __init__(self, path: str, what: str = STORAGE_FULL[errno.ENOSPC]) -> None:
        self.path, self.what = str(path), what
        super().__init__(errno.ENOSPC, f"{self.path}: {what}")

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.what))
