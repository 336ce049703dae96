"""Say the budget, not ρ: :class:`CostTarget` drives GammaISTA's ρ to a MAC budget.

The right ρ changes by orders of magnitude with the model, the budget, the
learning rate and the number of epochs, and the pruned size is a cliff in ρ
(whole layers vanish past some value). ``CostTarget`` measures, every
``every`` steps, the multiply-adds the model would have if it were pruned now
(the removal plan of its zero-γ channels, counted without rebuilding) and
steers ρ so that the cost follows a schedule down to the budget:

* **start**: ρ starts where the shrink would bring an average |γ| to zero in
  about ``reach_at`` of training (``ρ₀ = mean|γ| / (steps · η · mean λ)``,
  times ``start_fraction``), whatever ρ the optimizer was built with;
* **schedule**: the target cost falls linearly from the starting cost to the
  budget over the first ``reach_at`` of training, then stays at the budget;
* **controller**: multiplicative, so ρ can move over orders of magnitude:
  ``ρ ← ρ · exp(gain · (cost − target) / start_cost)``, the factor limited to
  ``[1/max_step, max_step]`` per update (γ takes a while to reach zero after ρ
  rises, so larger steps overshoot) and ρ to ``[rho_min, rho_max]``; above the
  schedule ρ grows, below it ρ shrinks;
* **hold**: once the budget is reached the same loop holds the cost at the
  budget (ρ falls while the cost is below it, so removal stops, and rises again
  if channels come back).

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

import math
from typing import Any

import keras

from tf_gamma_prune.analysis.channel_graph import channel_graph
from tf_gamma_prune.analysis.flops import planned_macs
from tf_gamma_prune.errors import ArgumentError


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class CostTarget(keras.callbacks.Callback):
    """Adapt ``optimizer.rho`` during ``fit`` so the pruned model meets a MAC budget.

    Args:
        macs: the budget: a float in (0, 1) is a fraction of the model's MACs
            when training starts, an int an absolute number of multiply-adds.
        every: measure and adapt every this many training steps.
        reach_at: fraction of the training steps by which the schedule reaches
            the budget (the rest of training holds it and recovers accuracy).
        gain: controller gain (see the module docstring).
        max_step: largest factor by which one update may change ρ.
        rho_min / rho_max: bounds of ρ.
        tolerance: relative budget error accepted by :meth:`within_budget`.
        start_fraction: ρ₀ as a fraction of the estimate above (``None``:
            keep the optimizer's ρ).

    Use with :class:`~tf_gamma_prune.GammaISTA` (its ``rho`` must be a number,
    not a schedule). ``fit`` must know its number of steps (``epochs`` and a
    dataset of known length), or pass ``total_steps``.
    """

    def __init__(self, macs: float | int, *, every: int = 50, reach_at: float = 0.75,
                 gain: float = 4.0, max_step: float = 1.5, rho_min: float = 1e-6, rho_max: float = 1e4,
                 tolerance: float = 0.05, total_steps: int | None = None,
                 start_fraction: float | None = 0.3):
        super().__init__()
        if isinstance(macs, bool) or not isinstance(macs, (int, float)) or macs <= 0:
            raise ArgumentError(f"macs must be a fraction in (0, 1) or a positive MAC count, got {macs!r}.")
        if isinstance(macs, float) and macs >= 1:
            raise ArgumentError(f"macs={macs}: a float is a fraction of the model's MACs, in (0, 1).")
        if not 0 < reach_at <= 1:
            raise ArgumentError(f"reach_at must be in (0, 1], got {reach_at}.")
        if every < 1:
            raise ArgumentError(f"every must be >= 1 step, got {every}.")
        self.macs, self.every, self.reach_at, self.gain = macs, int(every), float(reach_at), float(gain)
        self.max_step = float(max_step)
        self.rho_min, self.rho_max, self.tolerance = float(rho_min), float(rho_max), float(tolerance)
        self.total_steps = total_steps
        self.start_fraction = start_fraction
        self.history: list[dict[str, float]] = []
        self.start_macs: int | None = None
        self.budget: int | None = None
        self._step = 0

    # ------------------------------------------------------------------ measuring
    def pruned_macs(self) -> int:
        """MACs of the model if its zero-γ channels were removed now (no rebuild)."""
        graph = channel_graph(self.model, fold="bias")
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
            if self.start_fraction is not None:
                optimizer.rho = self.start_fraction * self.starting_rho(optimizer)

    def starting_rho(self, optimizer: Any) -> float:
        """ρ at which the shrink alone would zero an average |γ| over ``reach_at`` of training."""
        import numpy as np

        from tf_gamma_prune.analysis.batchnorm import batchnorm_layers

        gammas = [np.abs(keras.ops.convert_to_numpy(layer.gamma)) for _, layer in
                  batchnorm_layers(self.model)]
        mean_gamma = float(np.mean(np.concatenate([g.ravel() for g in gammas])))
        penalties = list(optimizer.penalties.values()) or [optimizer.default_penalty]
        learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        steps = max(1.0, self.reach_at * self.total_steps)
        rho = mean_gamma / (steps * learning_rate * float(np.mean(penalties)))
        return min(self.rho_max, max(self.rho_min, rho))

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every == 0:
            self.adapt()

    def adapt(self) -> float:
        """Measure the cost, update ρ; returns the new ρ."""
        optimizer = self.model.optimizer
        macs = self.pruned_macs()
        target = self.scheduled_macs(self._step)
        rho = float(optimizer.rho)
        error = (macs - target) / self.start_macs
        step = math.log(self.max_step)
        factor = math.exp(min(step, max(-step, self.gain * error)))
        new = min(self.rho_max, max(self.rho_min, rho * factor))
        optimizer.rho = new
        self.history.append({"step": self._step, "macs": macs, "target": target,
                             "macs_fraction": macs / self.start_macs, "rho": new})
        return new

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.history:
            logs["rho"] = self.history[-1]["rho"]
            logs["pruned_macs_fraction"] = self.history[-1]["macs_fraction"]

    def get_config(self) -> dict[str, Any]:
        return {"macs": self.macs, "every": self.every, "reach_at": self.reach_at,
                "gain": self.gain, "max_step": self.max_step, "rho_min": self.rho_min, "rho_max": self.rho_max,
                "tolerance": self.tolerance, "total_steps": self.total_steps,
                "start_fraction": self.start_fraction}
