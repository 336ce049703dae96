"""Say the budget, not ρ: :class:`CostTarget` drives GammaISTA's ρ to a MAC budget.

The right ρ changes by orders of magnitude with the model, the budget, the
learning rate and the number of epochs, and the pruned size is a cliff in ρ
(whole layers vanish past some value). ``CostTarget`` measures, every
``every`` steps, the multiply-adds the model would have if it were pruned now
(the removal plan of its zero-γ channels, counted without rebuilding) and
steers ρ so that the cost follows a schedule down to the budget:

* **schedule**: the target cost falls linearly from the starting cost to the
  budget over the first ``reach_at`` of training, then stays at the budget;
* **controller** (feed-forward from the γ themselves, so it does not wind up
  while γ are on their way to zero): every ``every`` steps it finds the
  smallest threshold ``s`` on the penalty-normalised magnitudes ``|γ|/λ`` whose
  removal would bring the cost to the schedule's value one window ahead (a
  bisection over the channel groups, the ``min_channels`` largest of each layer
  excluded), and sets ``ρ = s / (every · η)``: the shrink ``η·ρ·λ`` per step
  then carries exactly those channels to zero over the next window, if the
  gradients did not push back. They do: aiming one window ahead, a pilot on the
  Fashion-MNIST reference lagged the schedule (2.83× at the end for 3×), so it
  aims ``lookahead`` windows ahead (default 2). Scaling the threshold instead
  overshoots badly — the |γ|/λ of a trained network are bunched, and 1.5× the
  threshold removed 7× the MACs in one window — so the next measurement, not a
  gain, corrects the rest;
* **hold**: once the cost is at the budget the threshold is 0, so ρ falls to
  ``rho_min`` and removal stops; channels that come back are removed again.

Its state (ρ, the measured cost) is logged every epoch (``logs["rho"]``,
``logs["pruned_macs_fraction"]``, so it lands in ``History`` and
TensorBoard), kept in :attr:`CostTarget.history`, and saved with the model
through the optimizer's ρ variable.

Example:

>>> import keras, numpy as np
>>> from tf_gamma_prune import GammaISTA
>>> from tf_gamma_prune.reference_models import fashion_vgg
>>> model = fashion_vgg(widths=(4, 4, 8, 8, 8, 8), input_shape=(8, 8, 1))
>>> model.compile(GammaISTA(keras.optimizers.SGD(0.05), min_channels=1),
...               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
>>> target = CostTarget(macs=0.5, every=2)
>>> x, y = np.random.rand(64, 8, 8, 1).astype("float32"), np.zeros(64, "int32")
>>> _ = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[target])
>>> 0.0 < target.history[-1]["macs_fraction"] <= 1.0
True
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.channel_graph import channel_graph
from tf_gamma_prune.analysis.flops import planned_macs
from tf_gamma_prune.errors import ArgumentError
from tf_gamma_prune.sparsify.distillation import model_being_trained


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class CostTarget(keras.callbacks.Callback):
    """Adapt ``optimizer.rho`` during ``fit`` so the pruned model meets a MAC budget.

    Args:
        macs: the budget: a float in (0, 1) is a fraction of the model's MACs
            when training starts, an int an absolute number of multiply-adds.
        every: measure and adapt every this many training steps.
        reach_at: fraction of the training steps by which the schedule reaches
            the budget (the rest of training holds it and recovers accuracy).
        rho_min / rho_max: bounds of ρ.
        tolerance: relative budget error accepted by :meth:`within_budget`.
        lookahead: how many windows ahead of the schedule the controller aims.

    Use with :class:`~tf_gamma_prune.GammaISTA` (its ``rho`` must be a number,
    not a schedule). ``fit`` must know its number of steps (``epochs`` and a
    dataset of known length), or pass ``total_steps``.
    """

    def __init__(self, macs: float | int, *, every: int = 50, reach_at: float = 0.75,
                 rho_min: float = 1e-6, rho_max: float = 1e4,
                 tolerance: float = 0.05, total_steps: int | None = None,
                 lookahead: int = 2):
        super().__init__()
        if isinstance(macs, bool) or not isinstance(macs, (int, float)) or macs <= 0:
            raise ArgumentError(f"macs must be a fraction in (0, 1) or a positive MAC count, got {macs!r}.")
        if isinstance(macs, float) and macs >= 1:
            raise ArgumentError(f"macs={macs}: a float is a fraction of the model's MACs, in (0, 1).")
        if not 0 < reach_at <= 1:
            raise ArgumentError(f"reach_at must be in (0, 1], got {reach_at}.")
        if every < 1:
            raise ArgumentError(f"every must be >= 1 step, got {every}.")
        self.macs, self.every, self.reach_at = macs, int(every), float(reach_at)
        self.lookahead = int(lookahead)
        self.rho_min, self.rho_max, self.tolerance = float(rho_min), float(rho_max), float(tolerance)
        self.total_steps = total_steps
        self.history: list[dict[str, float]] = []
        self.start_macs: int | None = None
        self.budget: int | None = None
        self._step = 0

    # ------------------------------------------------------------------ measuring
    def pruned_macs(self) -> int:
        """MACs of the model if its zero-γ channels were removed now (no rebuild)."""
        graph = channel_graph(model_being_trained(self.model), fold="bias")
        macs = planned_macs(graph, graph.removable_constant_groups())
        if macs is None:
            raise ArgumentError("CostTarget needs static spatial input sizes to count MACs.")
        return macs

    def scheduled_macs(self, step: int) -> float:
        """The target cost after ``step`` training steps."""
        total = self.total_steps or 1
        progress = min(1.0, step / max(1.0, self.reach_at * total))
        return self.start_macs - (self.start_macs - self.budget) * progress

    def within_budget(self) -> bool:
        """Whether the last measured cost is within ``tolerance`` of the budget."""
        return bool(self.history) and abs(self.history[-1]["macs"] - self.budget) <= (
            self.tolerance * self.budget)

    # ------------------------------------------------------------------ callbacks
    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        if not hasattr(optimizer, "rho"):
            raise ArgumentError(
                f"CostTarget steers GammaISTA's rho; the model is compiled with "
                f"{type(optimizer).__name__}. Compile with GammaISTA(inner_optimizer, rho=...)."
            )
        if self.total_steps is None:
            epochs, steps = self.params.get("epochs"), self.params.get("steps")
            if not epochs or not steps:
                raise ArgumentError("CostTarget needs the number of training steps: pass "
                                    "total_steps=..., or fit a dataset of known length.")
            self.total_steps = int(epochs) * int(steps)
        if self.start_macs is None:
            self.start_macs = self.pruned_macs()
            self.budget = int(round(self.macs * self.start_macs)) if isinstance(self.macs, float) \
                else int(self.macs)
            if self.budget >= self.start_macs:
                raise ArgumentError(f"The budget ({self.budget:,} MACs) is not below the model's "
                                    f"cost when training starts ({self.start_macs:,}).")
            optimizer.rho = self.rho_min  # nothing to remove before the first window

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every == 0:
            self.adapt()

    def adapt(self) -> float:
        """Measure the cost, set ρ for the next window; returns the new ρ."""
        optimizer = self.model.optimizer
        graph = channel_graph(model_being_trained(self.model), fold="bias")
        macs = planned_macs(graph, graph.removable_constant_groups())
        target = self.scheduled_macs(self._step + self.lookahead * self.every)
        threshold = 0.0 if macs <= target else self.threshold_for(graph, optimizer, target)
        learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        rho = threshold / (self.every * learning_rate) if learning_rate > 0 else self.rho_max
        rho = min(self.rho_max, max(self.rho_min, rho))
        optimizer.rho = rho
        self.history.append({"step": self._step, "macs": macs, "target": target,
                             "macs_fraction": macs / self.start_macs, "rho": rho})
        return rho

    def threshold_for(self, graph: Any, optimizer: Any, target: float) -> float:
        """The smallest threshold on ``|γ|/λ`` whose channel groups, removed, leave
        at most ``target`` MACs (the largest reachable one when none does)."""
        scores = group_scores(graph, optimizer)
        candidates = np.unique(scores[np.isfinite(scores)])
        if candidates.size == 0:
            return 0.0
        low, high = 0, len(candidates) - 1
        while low < high:
            mid = (low + high) // 2
            if planned_macs(graph, scores <= candidates[mid]) <= target:
                high = mid
            else:
                low = mid + 1
        return float(candidates[low])

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.history:
            logs["rho"] = self.history[-1]["rho"]
            logs["pruned_macs_fraction"] = self.history[-1]["macs_fraction"]

    def get_config(self) -> dict[str, Any]:
        return {"macs": self.macs, "every": self.every, "reach_at": self.reach_at,
                "lookahead": self.lookahead, "rho_min": self.rho_min, "rho_max": self.rho_max,
                "tolerance": self.tolerance, "total_steps": self.total_steps}


def group_scores(graph: Any, optimizer: Any) -> np.ndarray:
    """Per channel group, the largest ``|γ|/λ`` of its penalised BatchNormalization
    channels; ``inf`` for groups that cannot go (pinned, unpenalised, or among
    the ``min_channels`` largest of a layer)."""
    scores = np.full(graph.num_groups, -np.inf)
    spared = np.zeros(graph.num_groups, bool)
    keep = int(getattr(optimizer, "min_channels", 0))
    for name, variable, penalty in optimizer.targets:
        try:
            groups = graph.layer_channels(name)
        except KeyError:
            continue
        magnitude = np.abs(keras.ops.convert_to_numpy(variable)).astype(float) / penalty
        np.maximum.at(scores, groups, magnitude)
        if keep:
            spared[groups[np.argsort(-magnitude, kind="stable")[:keep]]] = True
    scores[np.isneginf(scores) | graph.pinned | spared] = np.inf
    return scores
