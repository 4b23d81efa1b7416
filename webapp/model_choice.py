"""Which checkpoint a request resolves to, and what the model pickers offer.

A requested pruning ratio snaps to the nearest ratio the zoo has for that method,
architecture and scale; ratio 0 is the dense model. An architecture may be named by its
preset (``edsr-tiny``) or its family (``EDSR``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from issp import IsspError
from issp.catalogue import Manifest
from issp.methods import label
from issp.models import SCALES
from webapp.checks import check_ratio, check_scale, echo, parse_method

DEFAULT_ARCH = "edsr-tiny"
FAMILY_LABELS = {"edsr": "EDSR-style", "swinir": "SwinIR-style"}


@dataclass(frozen=True)
class Choice:
    """The checkpoint a request resolves to, and a note for the user about it."""

    arch: str
    scale: int
    method: str
    ratio: float
    note: str


@dataclass(frozen=True)
class Options:
    """What the model pickers offer and show for the current selection."""

    archs: list[tuple[str, str]]
    arch: str | None
    ratio: float | None
    note: str


def zoo_archs(manifest: Manifest, scale: int | None = None) -> list[str]:
    """Architectures with at least one checkpoint (at ``scale`` if given), sorted."""
    return sorted({r.arch for r in manifest.checkpoints if scale is None or r.scale == scale})


def arch_label(arch: str) -> str:
    """``EDSR-style (edsr-tiny)`` for ``edsr-tiny``."""
    family = arch.split("-", 1)[0]
    return f"{FAMILY_LABELS.get(family, family)} ({arch})"


def resolve_arch(manifest: Manifest, arch: str | None, scale: int) -> str:
    """The zoo architecture meant by ``arch``: a preset name, or a family like ``EDSR``."""
    have = zoo_archs(manifest, scale)
    if not have:
        raise IsspError(f"the zoo has no x{scale} checkpoints yet")
    name = (arch or DEFAULT_ARCH).strip().lower() if isinstance(arch, str | None) else ""
    if name in have:
        return name
    family = [a for a in have if a.split("-", 1)[0] == name.removesuffix("-style")]
    if len(family) == 1:
        return family[0]
    raise IsspError(f"no x{scale} checkpoints of {echo(arch)}; the zoo has {', '.join(have)}")


def available_ratios(manifest: Manifest, arch: str, scale: int, method: str) -> list[float]:
    """Ratios with a checkpoint for ``method`` (manifest name); 0 stands for the dense model."""
    ratios = {
        0.0 if r.method == "dense" else float(r.ratio)
        for r in manifest.checkpoints
        if r.arch == arch and r.scale == scale and r.method in (method, "dense")
    }
    return sorted(ratios)


def nearest(ratio: float, ratios: Sequence[float]) -> float:
    """The entry of ``ratios`` closest to ``ratio`` (the smaller one on a tie)."""
    return min(ratios, key=lambda r: (abs(r - ratio), r))


def choose_model(
    manifest: Manifest, arch: str | None, scale: int, method: str, ratio: float
) -> Choice:
    """Validate a request and snap its ratio to the nearest checkpoint the zoo has."""
    scale = check_scale(scale)
    method = parse_method(method)
    ratio = check_ratio(ratio)
    arch = resolve_arch(manifest, arch, scale)
    ratios = available_ratios(manifest, arch, scale, method)
    if not ratios:
        raise IsspError(f"no {label(method)} checkpoints of {arch} x{scale} yet")
    used = nearest(ratio, ratios)
    name = "dense model" if used == 0 else f"{label(method)} ratio {used:g}"
    note = f"Using {arch} x{scale}, {name}."
    if abs(used - ratio) >= 1e-9:
        listed = ", ".join(f"{r:g}" for r in ratios)
        note = (
            f"Using {arch} x{scale}, {name} (nearest available to {ratio:g}; "
            f"available: {listed}, where 0 = dense)."
        )
    return Choice(arch, scale, "dense" if used == 0 else method, used, note)


def model_options(
    manifest: Manifest, scale: int, arch: str | None, method: str, ratio: float
) -> Options:
    """The architectures on offer at ``scale`` and the checkpoint the selection snaps to.

    Never raises: a selection the zoo cannot serve (yet) gets a note instead, because it
    runs whenever a picker moves, before the user has asked for anything.
    """
    archs = zoo_archs(manifest, scale) if scale in SCALES else []
    if arch not in archs:
        arch = DEFAULT_ARCH if DEFAULT_ARCH in archs else next(iter(archs), None)
    labelled = [(arch_label(a), a) for a in archs]
    try:
        choice = choose_model(manifest, arch, scale, method, ratio)
    except IsspError as err:
        return Options(labelled, arch, None, f"Not available: {err}.")
    return Options(labelled, choice.arch, choice.ratio, choice.note)
