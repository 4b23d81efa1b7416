"""Unstructured pruning methods for SR networks, with the shape of ``torch.ao.pruning``.

Attach a pruner to a model, call ``pruner.step()`` after every ``optimizer.step()``, and
save ``pruner.state_dict()`` with the training state. The training loop needs to know
nothing else about the method.

Methods (``r`` = ``ratio``, ``Kp`` = ``prune_steps``, ``t`` = 1, 2, ... the step count):

- ``issp``: Iterative Soft Shrinkage (Wang et al., ICCV 2023). For ``t < Kp`` the
  ``ceil(r * n)`` smallest-magnitude weights of each layer (never all ``n``: see
  ``pruned_count``) are multiplied by ``alpha``;
  at ``t = Kp`` the selection freezes into the mask and those weights are zeroed.
- ``iht``: Iterative Hard Thresholding: the same selection, set to zero at every step.
- ``l1``: dense training, one magnitude pruning at ``t = Kp``, then fine-tuning.
- ``gmp``: gradual magnitude pruning (Zhu and Gupta 2017): the pruned fraction follows
  ``r * (1 - (1 - t / Kp) ** 3)``, updated every ``gmp_interval`` steps.
- ``greg``: growing regularization (Wang et al., ICLR 2021; "SRP" in the ISS-P paper's
  tables, ``GReg-1`` in its authors' code): the selection made on the first step gets an
  L2 penalty, added to its gradient, that grows to ``GREG_CEILING`` over the first
  ``GREG_GROWTH`` of the pruning stage and is held for the rest; at ``t = Kp`` those
  weights are zeroed and the net fine-tuned (see ``Pruner._greg_step``).
- ``rigl``: dynamic sparse training (Evci et al., ICML 2020): a uniformly random mask of
  ratio ``r`` in every layer (not the paper's ERK distribution) from the start; every
  ``RIGL_INTERVAL`` steps before ``Kp`` each layer drops its ``f(t) * active``
  smallest-magnitude active weights and grows as many inactive ones with the largest
  dense-gradient magnitude, ``f(t)`` the drop fraction decayed by a cosine to 0 at ``Kp``
  (see ``Pruner._rigl_update``).
- ``scratch``: a random mask of ratio ``r`` fixed at initialization.
- ``dense``: no pruning; records the same telemetry.

Selection is per layer (``scope="local"``) or over all layers (``"global"``); with
``pattern="N:M"`` it is the N smallest-magnitude weights in every run of M consecutive
weights of a layer (``nm_mask``), the structure the authors' SwinIR runs use and sparse
hardware accelerates (2:4); GMP's ramp stays per layer and only its mask at ``Kp`` is N:M.

After the mask freezes, every step keeps the masked weights exactly zero, and their
gradients and optimizer state are zeroed so that momentum cannot revive them.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from issp import IsspError
from issp.prunable import prunable_weights, pruned_count
from issp.selection import nm_groups, nm_mask, parse_pattern, rigl_exchange, smallest_mask

METHODS = ("issp", "iht", "l1", "gmp", "greg", "rigl", "scratch", "dense")
# The methods whose mask is a magnitude selection, which ``pattern`` may shape.
MAGNITUDE = ("issp", "iht", "l1", "gmp", "greg")
# GReg's schedule, as a share of the pruning stage. The authors' SR runs add 1e-4 to the
# penalty every 20 iterations up to 0.5 (about 100k iterations), hold it 43,150 more, then
# prune (their README's --update_reg_interval 20 --reg_granularity_prune 0.0001
# --reg_upper_limit 0.5 --stabilize_reg_interval 43150): growth is 70% of that stage.
GREG_CEILING = 0.5
GREG_GROWTH = 0.7
# RigL's defaults (Evci et al. 2020): drop 30% of the active weights, decayed by a cosine,
# every 100 steps. It stops at Kp, where every method's mask freezes (the paper stops at 75%
# of training; the two-stage protocol's Kp is 25%, so 7 updates in 3000 steps).
RIGL_DROP = 0.3
RIGL_INTERVAL = 100
TELEMETRY_KEYS = ("flips", "grad_norm", "sparsity", "kept_abs", "selected_abs")


def check_ratio(ratio: float) -> float:
    """``ratio`` if it is a pruning ratio, in [0, 1); IsspError otherwise. The one check
    the CLI, the app and the pruner share."""
    if not isinstance(ratio, numbers.Real) or isinstance(ratio, bool):
        raise IsspError(f"pruning ratio must be a number in [0, 1), got {ratio!r}")
    if not 0 <= ratio < 1:
        raise IsspError(f"pruning ratio must be in [0, 1), got {ratio}")
    return ratio


def check_alpha(alpha: float | None) -> float:
    """``alpha`` if it is ISS-P's shrink factor, in (0, 1); IsspError otherwise."""
    if alpha is None or not 0 < alpha < 1:
        raise IsspError(f"alpha must be in (0, 1) (ISS-P's shrink factor), got {alpha}")
    return alpha


def check_steps(method: str, prune_steps: int, gmp_interval: int | None = None) -> None:
    """IsspError unless ``Kp`` (and the GMP/GReg interval, if given) are whole numbers of
    steps the method can use."""
    for label, steps in (("prune_steps", prune_steps), ("gmp_interval", gmp_interval)):
        whole = isinstance(steps, numbers.Integral) and not isinstance(steps, bool)
        if steps is not None and not whole:
            raise IsspError(f"{label} must be a whole number of steps, got {steps!r}")
    if prune_steps < 1 and method in (*MAGNITUDE, "rigl"):
        raise IsspError(f"prune_steps must be at least 1, got {prune_steps}")
    if gmp_interval is not None and gmp_interval < 1:
        raise IsspError(f"gmp_interval must be at least 1, got {gmp_interval}")


def check_arguments(
    method: str,
    ratio: float,
    prune_steps: int,
    alpha: float | None,
    scope: str,
    pattern: str | None,
    *,
    gmp_interval: int | None = None,
) -> None:
    """IsspError for a ``Pruner`` no run could use."""
    if method not in METHODS:
        raise IsspError(f"unknown pruning method {method!r}; choose from {', '.join(METHODS)}")
    check_ratio(ratio)
    if method == "issp":
        check_alpha(alpha)
    if scope not in ("local", "global"):
        raise IsspError(f"scope must be 'local' or 'global', got {scope!r}")
    if scope != "local" and method in ("rigl", "scratch"):
        raise IsspError(f"{method} draws its random mask per layer: scope must be 'local'")
    check_steps(method, prune_steps, gmp_interval)
    if pattern is None:
        return
    n, m = parse_pattern(pattern)
    if method not in MAGNITUDE or scope != "local":
        raise IsspError(
            f"an N:M pattern shapes a per-layer magnitude selection: methods "
            f"{', '.join(MAGNITUDE)} with scope 'local', not {method} ({scope})"
        )
    if not math.isclose(ratio, n / m):
        raise IsspError(f"pattern {pattern} prunes {n / m:g} of the weights, not {ratio}")


class Pruner:
    """Magnitude pruning of a model's conv and linear weights; see the module docstring.

    Args:
        model: the network (for DDP, the wrapped ``module``).
        method: one of ``METHODS``.
        ratio: fraction ``r`` of each layer's weights to prune, in [0, 1).
        prune_steps: ``Kp``, the step at which the mask freezes.
        alpha: ISS-P's shrink factor in (0, 1); ``issp`` needs one, the other methods
            ignore it (each training protocol's is in ``issp.train.PROTOCOLS``).
        scope: ``"local"`` (ratio per layer, the paper's default) or ``"global"`` (one
            magnitude threshold over all prunable weights).
        skip: fnmatch patterns of module names to leave dense (see ``prunable_weights``).
        optimizer: if given, its state for masked weights is zeroed when the mask freezes.
        seed: seed of the ``scratch`` and ``rigl`` methods' random masks.
        gmp_interval: steps between GMP mask updates (and GReg's penalty updates).
        telemetry: record the per-step series of ``telemetry()``; off only to measure
            what recording costs.
        pattern: ``"N:M"`` to select N of every M consecutive weights of a layer
            (``nm_mask``) instead of ``ceil(r * n)`` per layer; ``ratio`` must be N / M.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "issp",
        ratio: float = 0.9,
        prune_steps: int = 1000,
        alpha: float | None = None,
        scope: str = "local",
        skip: Sequence[str] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        seed: int = 0,
        gmp_interval: int = 10,
        telemetry: bool = True,
        pattern: str | None = None,
    ) -> None:
        check_arguments(
            method, ratio, prune_steps, alpha, scope, pattern, gmp_interval=gmp_interval
        )
        self.pattern = pattern
        self.method, self.ratio, self.alpha, self.scope = method, ratio, alpha, scope
        self.prune_steps, self.gmp_interval = prune_steps, gmp_interval
        self.optimizer = optimizer
        self.recording = telemetry
        self._model = model
        self.weights = prunable_weights(model, skip)
        if not self.weights:
            raise IsspError(
                "the model has no layer to prune: no trainable conv or linear weight outside "
                "skip (by default its first and last conv)"
            )
        self.names = list(self.weights)
        if pattern is not None:  # refused now rather than at Kp, where it is first used
            for w in self.weights.values():
                nm_groups(w.numel(), *parse_pattern(pattern))
        self.t = 0
        self.frozen = False
        self.masks: dict[str, torch.Tensor] | None = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._stage_hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._records: list[torch.Tensor] = []
        # GReg's penalty per weight: grows on its selection, added to the gradient by a hook.
        self.penalty: dict[str, torch.Tensor] = {}
        if method == "greg":
            self.penalty = {name: torch.zeros_like(w) for name, w in self.weights.items()}
            for name, w in self.weights.items():
                penalty = self.penalty[name]
                self._stage_hooks.append(
                    w.register_hook(lambda grad, w=w, penalty=penalty: grad + penalty * w.detach())
                )
        # RigL's dense gradient, kept only on the steps that update its mask.
        self._dense_grads: dict[str, torch.Tensor] = {}
        if method in ("scratch", "rigl"):
            generator = torch.Generator().manual_seed(seed)
            masks = {
                name: torch.randperm(w.numel(), generator=generator)
                .lt(pruned_count(w.numel(), ratio))
                .view_as(w)
                .to(w.device)
                for name, w in self.weights.items()
            }
            if method == "scratch":
                self._freeze(masks)
            else:
                self.masks = masks
                self._apply_mask()
                for name, w in self.weights.items():
                    hook = functools.partial(self._rigl_gradient, name)
                    self._stage_hooks.append(w.register_hook(hook))

    def step(self) -> None:
        """Advance one training step; call it right after ``optimizer.step()``."""
        self.t += 1
        stats = self._gradient_norms() if self.recording else None
        previous = self.masks
        if self.frozen:
            self._apply_mask()
        elif self.t < self.prune_steps:
            self._pruning_stage_step()
        elif self.method != "dense":
            self._freeze(self._final_mask())
        if stats is not None:
            self._record(stats, previous)

    def _pruning_stage_step(self) -> None:
        """One step before ``Kp``: ISS-P shrinks the current selection by ``alpha`` and IHT
        zeroes it; GMP, GReg and RigL follow their schedules; L1 and dense train on."""
        if self.method in ("issp", "iht"):
            self.masks = self._select(self.ratio)
            factor = self.alpha if self.method == "issp" else 0.0
            with torch.no_grad():
                for name, w in self.weights.items():
                    w.copy_(torch.where(self.masks[name], w * factor, w))
        elif self.method == "gmp":
            if self.t % self.gmp_interval == 0 or self.masks is None:
                fraction = self.ratio * (1 - (1 - self.t / self.prune_steps) ** 3)
                self.masks = self._select(fraction, structured=False)
            self._apply_mask()
        elif self.method == "greg":
            self._greg_step()
        elif self.method == "rigl":
            if self._dense_grads:
                self._rigl_update()
            self._apply_mask()

    def _greg_step(self) -> None:
        """GReg before Kp: select once, on the first step (the authors choose at the start
        and never again, ``basicsr/pruner/greg_pruner.py`` lines 66-67 and 82), then every
        ``gmp_interval`` steps raise the selection's penalty towards ``GREG_CEILING``,
        reaching it at ``GREG_GROWTH`` of ``Kp`` (their +1e-4 every 20 iterations,
        ``greg_pruner.py`` line 88), and hold it until ``Kp``. The hook adds ``penalty * w``
        to the gradient before the optimizer step, as their ``grad += reg * w`` (line 155).
        Where this departs from their code: docs/library.md, "GReg"."""
        if self.masks is None:
            self.masks = self._select(self.ratio)
        if self.t % self.gmp_interval == 0:
            growth = max(1.0, GREG_GROWTH * self.prune_steps)
            level = GREG_CEILING * min(1.0, self.t / growth)
            for name, penalty in self.penalty.items():
                penalty.copy_(self.masks[name] * level)

    def _final_mask(self) -> dict[str, torch.Tensor]:
        """The mask that freezes at Kp: GReg's penalised selection and RigL's current mask
        (once they have one), else the smallest weights now."""
        if self.method in ("greg", "rigl") and self.masks is not None:
            return self.masks
        return self._select(self.ratio)

    def _rigl_gradient(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """RigL's gradient hook: the pruned weights get none (so Adam leaves them at zero),
        and on a step that updates the mask the dense gradient is kept to grow by."""
        coming = self.t + 1  # step() has not counted this step yet
        if coming % RIGL_INTERVAL == 0 and coming < self.prune_steps:
            self._dense_grads[name] = grad.detach().clone()
        return grad.masked_fill(self.masks[name], 0.0)

    def _rigl_update(self) -> None:
        """Every layer's ``rigl_exchange`` at drop fraction ``f(t) = RIGL_DROP / 2 *
        (1 + cos(pi t / Kp))``, after this step's optimizer update (the paper skips that
        update on these 1% of steps). Grown weights start at zero; theirs and the dropped
        weights' Adam moments are reset. Under torch.distributed the dense gradients, which
        the hook sees before DDP averages them, are summed over the processes first, as the
        reference does, so that every process makes the same exchange."""
        fraction = RIGL_DROP / 2 * (1 + math.cos(math.pi * self.t / self.prune_steps))
        distributed = dist.is_available() and dist.is_initialized()
        masks = {}
        with torch.no_grad():
            for name, w in self.weights.items():
                if distributed:
                    dist.all_reduce(self._dense_grads[name])
                mask, grown = rigl_exchange(w, self.masks[name], self._dense_grads[name], fraction)
                w.masked_fill_(grown, 0.0)
                for value in self._optimizer_state(w):
                    value.masked_fill_(mask != self.masks[name], 0)
                masks[name] = mask
        self.masks = masks
        self._dense_grads = {}

    def _optimizer_state(self, w: torch.Tensor) -> list[torch.Tensor]:
        """The optimizer's per-weight tensors of ``w`` (Adam's moments), if any."""
        if self.optimizer is None:
            return []
        state = self.optimizer.state.get(w, {}).values()
        return [value for value in state if torch.is_tensor(value) and value.shape == w.shape]

    def _select(self, fraction: float, structured: bool = True) -> dict[str, torch.Tensor]:
        """The ``fraction`` smallest weights per layer (or overall), or the N:M selection
        where a pattern is set and ``structured`` (``fraction`` is then N / M)."""
        if self.pattern is not None and structured:
            n, m = parse_pattern(self.pattern)
            return {name: nm_mask(w, n, m) for name, w in self.weights.items()}
        if self.scope == "local":
            return {
                name: smallest_mask(w, pruned_count(w.numel(), fraction))
                for name, w in self.weights.items()
            }
        flat = torch.cat([w.detach().flatten() for w in self.weights.values()])
        mask = smallest_mask(flat, math.ceil(fraction * flat.numel()))
        sizes = [w.numel() for w in self.weights.values()]
        return {
            name: part.view_as(w)
            for (name, w), part in zip(self.weights.items(), mask.split(sizes), strict=True)
        }

    def _apply_mask(self) -> None:
        with torch.no_grad():
            for name, w in self.weights.items():
                w.masked_fill_(self.masks[name], 0.0)

    def _freeze(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks, self.frozen = masks, True
        # GReg's penalty and RigL's gradient hook serve the pruning stage only.
        for handle in self._stage_hooks:
            handle.remove()
        self._stage_hooks = []
        self._apply_mask()
        for name, w in self.weights.items():
            keep = (~masks[name]).to(w.dtype)
            # Masked gradients keep Adam's moments at zero for pruned weights.
            self._hooks.append(w.register_hook(lambda grad, keep=keep: grad * keep))
            for value in self._optimizer_state(w):
                value.masked_fill_(masks[name], 0)

    def _gradient_norms(self) -> torch.Tensor:
        # optimizer.step() leaves .grad untouched, so this is the pre-update gradient.
        return torch.stack(
            [
                w.grad.detach().norm() if w.grad is not None else w.new_zeros(())
                for w in self.weights.values()
            ]
        )

    def _record(self, grad_norm: torch.Tensor, previous: dict[str, torch.Tensor] | None) -> None:
        columns = []
        for name, w in self.weights.items():
            absw = w.detach().abs()
            zeros = (absw == 0).sum()
            if self.masks is None:
                selected = torch.zeros_like(absw, dtype=torch.bool)
            else:
                selected = self.masks[name]
            flips = (selected != previous[name]).sum() if previous is not None else zeros * 0
            n_selected = selected.sum()
            selected_sum = (absw * selected).sum()
            # 0/0 gives NaN for an empty side, which is what "no such weights" should read.
            columns.append(
                torch.stack(
                    [
                        flips.float(),
                        zeros.float() / absw.numel(),
                        (absw.sum() - selected_sum) / (absw.numel() - n_selected),
                        selected_sum / n_selected,
                    ]
                )
            )
        # One (5, layers) CPU tensor per step: cheap to keep and to stack at the end.
        self._records.append(torch.cat([grad_norm.float()[None], torch.stack(columns, 1)]).cpu())

    def telemetry(self) -> dict[str, np.ndarray]:
        """Per-step, per-layer series: ``flips``, ``grad_norm``, ``sparsity``, ``kept_abs``
        (mean |w| of kept weights), ``selected_abs`` (mean |w| of selected weights, NaN
        while nothing is selected). Each is an array of shape (steps, layers) whose
        columns follow ``self.names``."""
        if not self._records:
            return {key: np.zeros((0, len(self.names)), np.float32) for key in TELEMETRY_KEYS}
        stacked = torch.stack(self._records).numpy()
        # A step's record holds the gradient norms first (taken before the step), then the
        # other series in TELEMETRY_KEYS' order.
        order = ("grad_norm", *(key for key in TELEMETRY_KEYS if key != "grad_norm"))
        return {key: stacked[:, i] for i, key in enumerate(order)}

    def state_dict(self) -> dict:
        """Everything needed to resume: step, mask, frozen flag and telemetry."""
        return {
            "t": self.t,
            "frozen": self.frozen,
            "masks": dict(self.masks) if self.masks is not None else None,
            "records": torch.stack(self._records) if self._records else None,
            "penalty": {name: p.clone() for name, p in self.penalty.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``; call after the model's weights are loaded."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self.t, self.frozen = state["t"], False
        masks = state["masks"]
        if masks is not None:
            masks = {name: masks[name].to(self.weights[name].device) for name in self.names}
        self.masks = masks
        for name, penalty in state.get("penalty", {}).items():  # states before GReg lack it
            self.penalty[name].copy_(penalty)
        if state["frozen"]:
            self._freeze(masks)
        records = state["records"]
        self._records = list(records.unbind(0)) if records is not None else []

    def remove(self) -> nn.Module:
        """Detach the pruner, as ``torch.ao.pruning``'s ``squash_mask`` does: bake the mask's
        zeros into the weights (freezing the current selection first if the pruning stage
        has not ended), take the gradient hooks off, and return the plain model. The model
        can then be saved, exported or trained on without the pruner; its zeros are no
        longer enforced."""
        if self.method != "dense" and not self.frozen:
            self._freeze(self._final_mask())
        if self.masks is not None:
            self._apply_mask()
        for handle in self._hooks + self._stage_hooks:
            handle.remove()
        self._hooks, self._stage_hooks = [], []
        self.masks, self.frozen = None, False
        return self._model

    def pruned_layers(self) -> list[str]:
        """Names of the weights this pruner acts on (empty for ``dense``)."""
        return [] if self.method == "dense" else list(self.names)
