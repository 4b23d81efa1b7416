"""A request's arguments checked, and error messages fit to show the person who sent them.

Every user-facing problem is raised as :class:`issp.IsspError` with a message meant for
its sender; a bad value is quoted back cut to ``ECHO_CHARS`` (:func:`echo`), and a whole
message is cut to ``MESSAGE_CHARS`` with the server's paths taken out
(:func:`user_message`): an error must not hand a megabyte argument back to its sender.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path

from issp import IsspError, pruning
from issp.methods import COMPARED, label
from issp.models import SCALES

ECHO_CHARS = 80
MESSAGE_CHARS = 1000
# Seeds any torch and NumPy call takes: larger ones (2**63 and up) overflow inside them.
MAX_SEED = 2**31 - 1
# An absolute path: a slash not preceded by a word character, dot, colon or slash (so
# "x2/x4", "../a" and URLs are left alone), then one or more segments.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(?:/[^\s/'\"()\[\],;:]+)+")


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting a request back in an error."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def user_message(text: str, limit: int = MESSAGE_CHARS) -> str:
    """An error message as shown to a user: absolute paths cut to their last part, and at
    most ``limit`` characters.

    The library names files by their paths, which are the server's business; the request
    echoes are cut where they are made (:func:`echo`), this is the last line of defence.
    """
    text = _ABSOLUTE_PATH.sub(lambda match: Path(match.group()).name, text)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def parse_method(method: str) -> str:
    """The manifest name (``issp``/``iht``) of a method given by its label or its name."""
    names = {label(m).lower(): m for m in COMPARED} | {m: m for m in COMPARED}
    if not isinstance(method, str) or method.strip().lower() not in names:
        choices = ", ".join(label(m) for m in COMPARED)
        raise IsspError(f"unknown method {echo(method)}; choose one of {choices}")
    return names[method.strip().lower()]


def check_choice(value: object, name: str, choices: Collection[str]) -> str:
    """The one of ``choices`` that ``value`` names, in any case, else IsspError naming
    ``name`` and the choices."""
    if isinstance(value, str):
        for option in choices:
            if value.strip().lower() == option.lower():
                return option
    raise IsspError(f"{name} must be one of {', '.join(choices)}, got {echo(value)}")


def check_ratio(ratio: float) -> float:
    """``ratio`` as a float in [0, 1), else IsspError."""
    try:
        value = float(ratio)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past float's range
        raise IsspError(f"pruning ratio must be a number in [0, 1), got {echo(ratio)}") from None
    return pruning.check_ratio(value)


def check_scale(scale: int | str) -> int:
    """``scale`` as an int the models support, else IsspError. The API schema shows the
    radio's choices as strings, so ``"2"`` is taken as 2; ``2.5`` or ``"2.0"`` are not."""
    try:
        value = int(scale.strip()) if isinstance(scale, str) else int(scale)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float
        value = None
    exact = isinstance(scale, str) or value == scale
    if value is None or not exact or value not in SCALES:
        raise IsspError(f"scale must be one of {', '.join(map(str, SCALES))}, got {echo(scale)}")
    return value


def whole(value: object, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high], else IsspError naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise IsspError(f"{name} must be a whole number, got {echo(value)}") from None
    if not number.is_integer():
        raise IsspError(f"{name} must be a whole number, got {echo(value)}")
    if number < low or (high is not None and number > high):
        bound = f"at least {low}" if high is None else f"from {low} to {high:,}"
        raise IsspError(f"{name} must be {bound}, got {echo(value)}")
    return int(number)


def number(value: object, name: str) -> float:
    """``value`` as a float, else IsspError naming ``name``."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise IsspError(f"{name} must be a number, got {echo(value)}") from None
