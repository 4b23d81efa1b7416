"""What the CLI's parsers share: ``Parser``, whose errors are one line, and the argument
types that refuse a bad value where it is given (``--ratio 1.5``), before any work starts.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from issp import IsspError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump)."""

    def error(self, message: str) -> None:
        raise IsspError(f"{self.prog}: {message}")


def pruning_ratio(text: str) -> float:
    """A pruning ratio, in [0, 1) (``issp.pruning.check_ratio``)."""
    from issp.pruning import check_ratio

    try:
        return check_ratio(float(text))
    except IsspError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def shrink_factor(text: str) -> float:
    """ISS-P's shrink factor alpha, in (0, 1) (``issp.pruning.check_alpha``)."""
    from issp.pruning import check_alpha

    try:
        return check_alpha(float(text))
    except IsspError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """A number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers: ``0,1,2``."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 0,1,2, got {text}") from None


def float_list(text: str) -> tuple[float, ...]:
    """Comma-separated positive numbers: ``0.9,0.99``."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.9,0.99, got {text}") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text}")
    return values


def existing_path(text: str) -> Path:
    """A file or folder that exists."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text}")
    return path
