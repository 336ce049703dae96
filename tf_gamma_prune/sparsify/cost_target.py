"""Say the budget, not ρ: :class:`CostTarget` drives GammaISTA's ρ to a MAC or parameter budget.

The right ρ changes by orders of magnitude with the model, the budget, the
learning rate and the number of epochs, and the pruned size is a cliff in ρ
(whole layers vanish past some value). ``CostTarget`` measures, every
``every`` steps, the cost the model would have if it were pruned now (the
removal plan of its zero-γ channels, counted without rebuilding: multiply-adds
with ``macs=``, parameters with ``params=``; of the model ``prune_model`` builds
with the same ``fold`` and ``carrier_tile``) and steers ρ so that the cost
follows a schedule down to the budget:

* **schedule**: the target cost falls linearly from the starting cost to the
  budget over the first ``reach_at`` of training, then stays at the budget;
* **plan** (feed-forward, from the γ themselves, so it does not wind up while
  γ are on their way to zero): every ``every`` steps it finds the threshold
  ``s`` on the penalty-normalised magnitudes ``|γ|/λ`` whose removal brings the
  cost closest to the schedule's value ``lookahead`` windows ahead (a bisection
  over the channel groups, the ``min_channels`` largest of each layer
  excluded), and sets ``ρ = s / (every · η)``: the shrink ``η·ρ·λ`` of the next
  window then carries exactly those channels to zero, if the gradients did not
  push back;
* **feedback on the push-back**: the gradients do push back, and the more so
  the larger the learning rate (the shrink of a window is ``s`` whatever η is;
  the gradients' share grows with η, and a γ that the loss needs settles where
  ``|∂L/∂γ| = ρ·λ``, a fixed ρ·λ that ``s / (every · η)`` gives less of at a
  larger η). The feed-forward plan alone stalls there: on Fashion-MNIST
  (``fashion_vgg`` 8-8-16-16-32-32 trained briefly, 200 steps of SGD with
  momentum 0.9, a third of the MACs) it ended 12 % above the budget at learning
  rate 0.005 and 85 % above it at 0.02. So every window measures, per channel
  group, how far its ``|γ|/λ`` ended above where the shrink alone would have put
  it (at most the shrink: a channel that grew back was held), keeps a running
  mean (``push_smoothing``) over the windows that shrink (a hold's rebound says
  nothing about resisting a shrink), and plans on ``|γ|/λ + push_gain · push``:
  a channel the gradients hold up needs that much more shrink, and one held up
  again needs more still, so ρ climbs only for the channels the plan needs. The
  gain of 2 is measured: 1 still lagged (+13 % and +26 % at 0.02 for 1/3 and
  1/6 of the MACs). Scaling the whole threshold, or the planned removal, by the
  realised/planned ratio instead overshoots: the |γ|/λ of a trained network are
  bunched (1.5× the threshold removed 7× the MACs in one window; a removal plan
  divided by the measured efficiency, 1/5, aimed from 0.56 of the MACs at 0.03
  and the model's training accuracy fell to 0.29);
* **rate limit**: above the largest ρ used so far, ρ grows at most
  ``rho_growth`` (1.5×) from one shrinking window to the next (a limit on
  every rise instead held a smoke run's ρ at 0.02 → 0.8 for 9 windows after a
  small plan, and it ended 47 % above its budget): without it a jump of ρ from 1.6 to 3.2 took 0.40 of the
  MACs to 0.07 in one window (at 0.04, a third of the MACs), and the revive
  below had to rebuild the model twice (training accuracy 0.42 instead of 0.68);
* **lock**: a channel found at zero before a step stays removed: before every
  step its γ is set back to 0 and its β (the constant it outputs) back to its
  value when it was locked, so the fold's plan for it (carriers) does not move
  either. Without it the hold does not hold: at ρ near 0 a zero γ with a
  non-zero gradient comes back at the next step (0.28 → 0.45 of the MACs within
  10 steps at learning rate 0.02);
* **hold**: once the cost is within ``tolerance / 2`` above the target, ρ is
  ``rho_min``: removal stops, the locked channels stay removed, and the others
  recover for the rest of training. In the last window (nothing after it could
  revive an overshoot) a cost within ``tolerance`` of the budget is held too: in
  a tiny model one channel can be 10 % of the MACs, and a CLI test's last window
  went from +4.8 % to −14 %;
* **revive** (``revive=True``): when the cost fell more than ``tolerance / 2``
  below the budget (a window removed more than planned), the most recently
  locked groups whose return brings the cost closest to the budget are unlocked
  and, at ``rho_min``, grow back from γ = 0 (their kernels were not trained
  while γ was 0). One channel of an early layer can be a tenth of a small
  model's budget, so without it the last window alone decides the error;
* **final trim** (``final_trim=True``): a run that ends more than ``tolerance``
  above the budget (the last windows' shrink was pushed back, or a revived
  channel grew and nothing after it could remove one) gets, at the end of
  training, γ = 0 for the groups of smallest ``|γ|/λ`` that bring the cost
  closest to the budget (what one more window would have removed; their β
  stays, the fold carries the constant). A ``UserWarning`` says how many; the
  history's last record has ``"trimmed"``. A tiny CLI test model (4–8 channels,
  48 steps) ended +4 % to +7 % above its budget without it.

Measured (the setting above, ``every=10``, ``reach_at=0.6``,
``min_channels=2``; error of the MACs of ``prune_model(model)`` against the
budget; ``docs/gamma_ista.md`` has the table): a third of the MACs −2.2 %,
+0.3 %, −0.3 % at learning rates 0.005, 0.02, 0.04; a sixth +1.2 %, −0.2 %,
+1.1 %. The 32-64-128 reference at a third (12,800 images, 200 steps,
``min_channels=4``): −3.3 % at 0.005 and at 0.02 (the first controller:
2.14× instead of 3× at 0.02 on the full data).

A budget below what can be reached (every group that can go gone: pinned
channels and the ``min_channels`` floor stay) raises
:class:`~tf_gamma_prune.errors.BudgetUnreachableError` when training starts,
naming the reachable minimum; if the floor moves during training and every
removable channel is gone above the budget, a ``UserWarning`` says so once.

**Latency budgets** (``latency_ms=2.0`` or ``latency=0.5`` with ``table=``):
the cost is the latency a :class:`~tf_gamma_prune.analysis.latency_table.LatencyTable`
predicts for the pruned model, in integer nanoseconds (metric ``latency_ns``);
everything above applies unchanged. Pair it with
``gamma_penalties(model, cost="latency", table=table)`` so that λ, too, weighs
each layer's channels by the time they cost.

Its state (ρ, the measured cost) is logged every epoch (``logs["rho"]``,
``logs["pruned_macs_fraction"]`` or ``logs["pruned_params_fraction"]``, so it
lands in ``History`` and TensorBoard) and kept in :attr:`CostTarget.history`.
The whole controller state (start cost, budget, step, locks, push estimates,
history) is JSON: :meth:`CostTarget.get_state` / :meth:`~CostTarget.set_state`,
also inside :meth:`~CostTarget.get_config` (so ``from_config`` continues
exactly) and saved by :class:`~tf_gamma_prune.sparsify.resume.StepCheckpoint`
for an exact mid-epoch resume with
:func:`~tf_gamma_prune.sparsify.resume.fit_resumable`.

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
>>> CostTarget.from_config(target.get_config()).get_state() == target.get_state()
True
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.batchnorm import batchnorm_layers
from tf_gamma_prune.analysis.channel_graph import ChannelGraph, channel_graph
from tf_gamma_prune.analysis.flops import planned_macs, planned_params
from tf_gamma_prune.analysis.latency_table import LatencyTable, planned_latency_ms
from tf_gamma_prune.errors import ArgumentError, BudgetUnreachableError
from tf_gamma_prune.prune.plan import plan_removal, rounded_removal
from tf_gamma_prune.sparsify.budget_cuts import (closest_threshold, group_scores, slimming_selection,
                                                trim_groups, zero_dropped_gamma)
from tf_gamma_prune.sparsify.distillation import model_being_trained
from tf_gamma_prune.prune.width_alignment import aligned_removal

_STATE_FORMAT = 1
LATENCY = "latency_ns"  # the metric of a latency budget: predicted nanoseconds (integers, like MACs)
_FOLDS = ("auto", "carrier", "exact", "bias")


def _budget_value(name: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ArgumentError(
            f"{name} must be a fraction in (0, 1) or a positive absolute count, got {value!r}.")
    if isinstance(value, float) and value >= 1:
        raise ArgumentError(
            f"{name}={value}: a float is a fraction of the model's {name} when training "
            f"starts, in (0, 1); pass an int for an absolute budget (e.g. {name}={int(value)}).")
    return value


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class CostTarget(keras.callbacks.Callback):
    """Adapt ``optimizer.rho`` during ``fit`` so the pruned model meets a MAC or parameter budget.

    Args:
        macs: a MAC budget: a float in (0, 1) is a fraction of the model's MACs
            when training starts, an int an absolute number of multiply-adds.
        params: a parameter budget, the same way (a fraction or an absolute
            count of the parameters the pruned model keeps, BatchNormalization
            statistics included).
        latency_ms: a latency budget in milliseconds, predicted by ``table``
            (:mod:`tf_gamma_prune.analysis.latency_table`: measured per layer,
            tile effects included, so the controller removes the channels that
            buy time on that device).
        latency: a latency budget as a fraction in (0, 1) of the predicted
            latency when training starts (``latency=0.5``: twice as fast).
            Give exactly one of ``macs``, ``params``, ``latency_ms``, ``latency``.
        table: with a latency budget, the model's
            :class:`~tf_gamma_prune.analysis.latency_table.LatencyTable` (or its
            ``to_json()`` dict, or the path of a saved one).
        every: measure and adapt every this many training steps.
        reach_at: fraction of the training steps by which the schedule reaches
            the budget (the rest of training holds it and recovers accuracy).
        rho_min / rho_max: bounds of ρ.
        tolerance: relative budget error accepted by :meth:`within_budget`; the
            controller holds within ``tolerance / 2`` of its target.
        total_steps: the number of training steps of the run; by default
            ``(epochs − initial_epoch) × steps`` of the ``fit`` call
            (``fit_resumable`` sets it from its ``epochs``).
        lookahead: how many windows ahead of the schedule the plan aims.
        push_gain: the plan adds this many times each group's measured
            push-back to its ``|γ|/λ`` (0: the feed-forward plan alone).
        push_smoothing: weight of the newest window in the running mean of each
            group's push-back (1: the last window only).
        rho_growth: above the largest ρ used so far, ρ grows at most by this
            factor from one shrinking window to the next.
        revive: unlock removed groups again when the cost fell below the budget
            band (see the module docstring).
        fold / carrier_tile: the ``prune_model`` options the model will be pruned
            with: the cost counted is that of the model it builds (``"auto"`` and
            ``"carrier"`` keep some constant channels back to carry the removed
            ones). With ``fold="exact"`` the border-correction maps' parameters
            are not counted.
        unknown_layers: ``prune_model``'s option, passed on the same way:
            ``"opaque"`` counts a model with composite custom layers, their
            channels kept whole (then prune with ``unknown_layers="opaque"`` too).
        round_to: widths at multiples of this tile (XNNPACK's: 16 float32
            channels on AVX-512, 8 on ARM NEON; a width between tiles costs the
            next tile's time). Until the schedule reaches the budget the
            controller steers as without it; then, once, it moves every width to
            a multiple of ``round_to`` within the budget
            (:func:`~tf_gamma_prune.prune.width_alignment.aligned_removal`:
            the lowest ``|γ|/λ`` of a layer go to zero to drop a block, removed
            channels come back to fill one) and holds those widths for the rest
            of the fit. The model's own widths are then multiples of
            ``round_to`` (zero-γ channels that fill a started block are woken
            and train), so ``prune_model(model)`` builds them.
        final_trim: at the end of the run, set γ = 0 for the smallest-``|γ|/λ``
            groups if the cost is more than ``tolerance`` above the budget
            (see the module docstring; ``False``: leave it, :meth:`within_budget`
            says so).

    Use with :class:`~tf_gamma_prune.GammaISTA` (its ``rho`` must be a number,
    not a schedule), or with :class:`~tf_gamma_prune.NetworkSlimming`: its
    penalty ``l1`` stays as given, and at the end of training the global |γ|
    threshold that meets the budget is applied (:meth:`set_slimming_threshold`:
    the γ below it become 0, ``prune_model`` removes them).
    """

    def __init__(self, macs: float | int | None = None, *, params: float | int | None = None,
                 latency_ms: float | None = None, latency: float | None = None,
                 table: "LatencyTable | dict | str | None" = None, every: int = 50, reach_at: float = 0.75, rho_min: float = 1e-6,
                 rho_max: float = 1e4, tolerance: float = 0.05, total_steps: int | None = None,
                 lookahead: int = 2, push_gain: float = 2.0, push_smoothing: float = 0.5,
                 rho_growth: float = 1.5, revive: bool = True, fold: str = "auto",
                 carrier_tile: int = 1, unknown_layers: str = "error", round_to: int = 1,
                 final_trim: bool = True):
        super().__init__()
        given = {k: v for k, v in (("macs", macs), ("params", params), ("latency_ms", latency_ms),
                                   ("latency", latency)) if v is not None}
        if len(given) != 1:
            raise ArgumentError("CostTarget takes exactly one budget: macs=..., params=..., "
                                f"latency_ms=... or latency=... (got {given or 'none'}).")
        self.metric = {"macs": "macs", "params": "params"}.get(next(iter(given)), LATENCY)
        self.macs = None if macs is None else _budget_value("macs", macs)
        self.params_budget = None if params is None else _budget_value("params", params)
        self.latency_ms, self.latency = _latency_budget(latency_ms, latency)
        self.table = _latency_table(table, self.metric == LATENCY)
        if not 0 < reach_at <= 1:
            raise ArgumentError(f"reach_at must be in (0, 1], got {reach_at}.")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ArgumentError(f"every must be an integer >= 1 step, got {every!r}.")
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0:
            raise ArgumentError(f"lookahead must be an integer >= 0 windows, got {lookahead!r}.")
        if not push_gain >= 0:
            raise ArgumentError(f"push_gain must be >= 0 (0: no push-back feedback), got {push_gain}.")
        if not rho_growth > 1:
            raise ArgumentError(f"rho_growth must be > 1 (float('inf'): no limit), got {rho_growth}.")
        if not 0 < push_smoothing <= 1:
            raise ArgumentError(f"push_smoothing must be in (0, 1], got {push_smoothing}.")
        if not 0 < tolerance < 1:
            raise ArgumentError(f"tolerance must be in (0, 1), got {tolerance}.")
        if not 0 <= rho_min <= rho_max:
            raise ArgumentError(f"Need 0 <= rho_min <= rho_max, got {rho_min} and {rho_max}.")
        if total_steps is not None and (isinstance(total_steps, bool) or total_steps < 1):
            raise ArgumentError(f"total_steps must be a positive number of steps, got {total_steps!r}.")
        self.every, self.reach_at, self.lookahead = every, float(reach_at), lookahead
        self.rho_min, self.rho_max, self.tolerance = float(rho_min), float(rho_max), float(tolerance)
        self.push_gain, self.push_smoothing = float(push_gain), float(push_smoothing)
        self.revive, self.rho_growth = bool(revive), float(rho_growth)
        if fold not in _FOLDS:
            raise ArgumentError(f"fold must be one of {_FOLDS} (prune_model's), got {fold!r}.")
        if isinstance(carrier_tile, bool) or not isinstance(carrier_tile, int) or carrier_tile < 1:
            raise ArgumentError(f"carrier_tile must be an integer >= 1, got {carrier_tile!r}.")
        if unknown_layers not in ("error", "opaque"):
            raise ArgumentError(f"unknown_layers must be 'error' or 'opaque' (prune_model's), "
                                f"got {unknown_layers!r}.")
        if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
            raise ArgumentError(f"round_to must be an integer >= 1 (prune_model's), got {round_to!r}.")
        self.fold, self.carrier_tile, self.unknown_layers = fold, carrier_tile, unknown_layers
        self.round_to, self.final_trim = round_to, bool(final_trim)
        self.total_steps = None if total_steps is None else int(total_steps)
        self._reset_state()
        self._layer_groups: dict[str, np.ndarray] | None = None  # per target: group of each channel
        self._betas: dict[str, Any] | None = None  # per target: its BatchNormalization's β

    def _reset_state(self) -> None:
        self.history: list[dict[str, float]] = []
        self.start_cost: int | None = None
        self.budget: int | None = None
        self.reachable: int | None = None  # the cost with every removable group gone
        self._start_iteration = 0
        self.selection: dict[str, np.ndarray] | None = None  # NetworkSlimming: set at the end
        self._done = -1              # steps processed (measured/enforced) so far
        self._next_measure = 0
        self._locked: dict[str, np.ndarray] = {}   # per γ layer: channels held at zero
        self._lock_step: dict[int, int] = {}       # group -> step it was locked at
        self._push: np.ndarray | None = None       # per group, running mean (nan: unknown)
        self._last: tuple[np.ndarray, int, float] | None = None  # scores, iteration, η·ρ
        self._warned = False
        self._revived: set[int] = set()          # unlocked groups not grown back yet
        self._frozen_beta: dict[str, np.ndarray] = {}  # per γ layer: β at lock time
        self._rho_active: float | None = None  # ρ of the last window that shrank
        self._rho_peak = 0.0                    # the largest ρ of such a window
        self._aligned = False                   # round_to: widths moved to tiles, held since

    # ------------------------------------------------------------------ naming
    @property
    def budget_argument(self) -> float | int:
        """The budget as given: a fraction (float) or an absolute cost (int; latency in ns)."""
        if self.metric == LATENCY:
            return self.latency if self.latency is not None else int(round(self.latency_ms * 1e6))
        return self.macs if self.metric == "macs" else self.params_budget

    @property
    def start_macs(self) -> int | None:
        """The cost when training started (MACs or parameters: see :attr:`metric`)."""
        return self.start_cost

    # ------------------------------------------------------------------ measuring
    def cost(self, graph: ChannelGraph, removed: np.ndarray) -> int:
        """The budgeted cost of the model ``prune_model`` builds when removing ``removed``
        (MACs, parameters, or predicted nanoseconds with a latency budget)."""
        if self.metric == "params":
            return planned_params(graph, removed)
        if self.metric == LATENCY:
            return int(round(planned_latency_ms(graph, removed, self.table) * 1e6))
        macs = planned_macs(graph, removed)
        if macs is None:
            raise ArgumentError("CostTarget(macs=...) needs static spatial input sizes to count "
                                "MACs; build the model with a fixed input size or use params=.")
        return macs

    def measure_graph(self) -> ChannelGraph:
        """The channel graph of the model as it is now (which channels are constant)."""
        return channel_graph(model_being_trained(self.model), fold="bias",
                             unknown_layers=self.unknown_layers)

    def measure(self, rounded: bool = True) -> tuple[ChannelGraph, np.ndarray, int, int]:
        """``(graph, removed, plain, cost)``: the bias-fold channel graph the plans use,
        its removable groups, their cost with ``fold="bias"``, and the cost of what
        ``prune_model(model, fold=self.fold, carrier_tile=self.carrier_tile,
        round_to=self.round_to)`` would build now (carriers kept back and widths
        rounded up included; ``rounded=False``: not rounded)."""
        graph = self.measure_graph()
        removed = graph.removable_constant_groups()
        plain = self.cost(graph, removed)
        round_to = self.round_to if rounded else 1
        if self.fold == "bias":
            return graph, removed, plain, self.rounded_cost(graph, removed, round_to)
        folded = channel_graph(model_being_trained(self.model), fold=self.fold,
                               unknown_layers=self.unknown_layers)
        kept = plan_removal(folded, None, carrier_tile=self.carrier_tile,
                            round_to=round_to).removed
        return graph, removed, plain, self.cost(folded, kept)

    def rounded_cost(self, graph: ChannelGraph, removed: np.ndarray,
                     round_to: int | None = None) -> int:
        """:meth:`cost` with the widths rounded up to ``round_to`` (default: this
        controller's), as ``prune_model(..., round_to=...)`` keeps them."""
        round_to = self.round_to if round_to is None else round_to
        return self.cost(graph, rounded_removal(graph, removed, round_to))

    def pruned_cost(self) -> int:
        """The cost of the model if its zero-γ channels were removed now (no rebuild)."""
        return self.measure()[3]

    pruned_macs = pruned_cost  # old name

    def scheduled_cost(self, step: int) -> float:
        """The target cost after ``step`` training steps."""
        total = self.total_steps or 1
        progress = min(1.0, step / max(1.0, self.reach_at * total))
        return self.start_cost - (self.start_cost - self.budget) * progress

    scheduled_macs = scheduled_cost  # old name

    def within_budget(self) -> bool:
        """Whether the last measured cost is within ``tolerance`` of the budget."""
        return bool(self.history) and abs(self.history[-1][self.metric] - self.budget) <= (
            self.tolerance * self.budget)

    # ------------------------------------------------------------------ callbacks
    def _optimizer(self) -> Any:
        """The GammaISTA whose ρ is steered, found through wrappers around it
        (``LossScaleOptimizer``, ``CoarseRanking``, ...: anything with an ``inner_optimizer``)."""
        top = optimizer = self.model.optimizer
        while not (hasattr(optimizer, "rho") and hasattr(optimizer, "targets")) \
                and not _is_slimming(optimizer) and hasattr(optimizer, "inner_optimizer"):
            optimizer = optimizer.inner_optimizer
        if _is_slimming(optimizer):
            if not optimizer.built:
                optimizer.attach(model_being_trained(self.model))
                top.build(self.model.trainable_variables)
            return optimizer
        if not hasattr(optimizer, "rho") or not hasattr(optimizer, "targets"):
            raise ArgumentError(
                f"CostTarget steers GammaISTA's rho; the model is compiled with "
                f"{type(optimizer).__name__}. Compile with GammaISTA(inner_optimizer, rho=...)."
            )
        if getattr(optimizer, "_rho_schedule", None) is not None:
            raise ArgumentError("CostTarget sets GammaISTA's rho itself; build GammaISTA with a "
                                "number for rho (e.g. rho=1e-3), not a schedule.")
        if not optimizer.built:  # build from the outermost wrapper: it builds the ones inside
            wrapper = top
            while True:
                if hasattr(wrapper, "attach"):
                    wrapper.attach(model_being_trained(self.model))
                if wrapper is optimizer or not hasattr(wrapper, "inner_optimizer"):
                    break
                wrapper = wrapper.inner_optimizer
            top.build(self.model.trainable_variables)
        return optimizer

    def _iterations(self, optimizer: Any) -> int:
        return int(keras.ops.convert_to_numpy(optimizer.iterations))

    def on_train_begin(self, logs=None):
        optimizer = self._optimizer()
        if _is_slimming(optimizer):  # nothing to steer: the threshold is set at the end
            if self.start_cost is None:
                self.start_cost = self.measure()[3]
                value = self.budget_argument
                self.budget = int(round(value * self.start_cost)) if isinstance(value, float) else int(value)
            return
        graph = self.measure_graph()
        self._layer_groups = {}
        for name, _, _ in optimizer.targets:
            try:
                self._layer_groups[name] = graph.layer_channels(name)
            except KeyError:
                continue
        self._betas = {name: layer.beta for name, layer in batchnorm_layers(
            model_being_trained(self.model)) if getattr(layer, "beta", None) is not None}
        if self.start_cost is None:
            self._start(graph, optimizer)

    def on_epoch_begin(self, epoch, logs=None):
        if self.total_steps is None:  # this fit's steps, from its first epoch on
            epochs, steps = self.params.get("epochs"), self.params.get("steps")
            if not epochs or not steps:
                raise ArgumentError("CostTarget needs the number of training steps: pass "
                                    "total_steps=..., or fit a dataset of known length.")
            self.total_steps = (int(epochs) - int(epoch)) * int(steps)

    def _start(self, graph: ChannelGraph, optimizer: Any) -> None:
        _, removed, plain, self.start_cost = self.measure()
        value = self.budget_argument
        self.budget = int(round(value * self.start_cost)) if isinstance(value, float) else int(value)
        if self.budget >= self.start_cost:
            raise ArgumentError(f"The budget ({self.budget:,} {self.metric}) is not below the "
                                f"model's cost when training starts ({self.start_cost:,}).")
        scores = group_scores(graph, optimizer)
        self.reachable = (self.rounded_cost(graph, removed | np.isfinite(scores))
                          + self.start_cost - self.rounded_cost(graph, removed))
        if self.budget < self.reachable:
            raise BudgetUnreachableError(
                f"The budget of {self.budget:,} {self.metric} cannot be reached: with every "
                f"channel that may go removed the model keeps {self.reachable:,} "
                f"({self.reachable / self.start_cost:.1%} of {self.start_cost:,}); pinned "
                f"channels, unpenalised layers and GammaISTA(min_channels="
                f"{getattr(optimizer, 'min_channels', 0)}) stay. Ask for at least that, or "
                "lower min_channels / penalise the excluded layers.",
                budget=self.budget, reachable=self.reachable)
        self._start_iteration = self._iterations(optimizer)
        self._done, self._next_measure = -1, 0

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self._optimizer()
        if not _is_slimming(optimizer):
            self._catch_up(optimizer)

    def on_train_end(self, logs=None):
        optimizer = self._optimizer()
        if _is_slimming(optimizer):
            self.set_slimming_threshold(optimizer)
            return
        self._catch_up(optimizer)
        if self.total_steps and self._done >= self.total_steps and (not self.history
                                               or self.history[-1]["step"] != self._done):
            self.adapt()  # the end of the run: record the final cost
        if (self.final_trim and self.total_steps and self._done >= self.total_steps
                and not self._aligned and "trimmed" not in (self.history or [{}])[-1]):
            self.trim_to_budget(optimizer)

    def trim_to_budget(self, optimizer: Any | None = None) -> int:
        """If the cost is more than ``tolerance`` above the budget: γ = 0 (β kept) for the
        groups of smallest ``|γ|/λ`` whose removal brings it closest to the budget (a group
        whose removal would jump below the tolerance band is skipped for the next), locked,
        recorded in :attr:`history` (``"trimmed"``: how many groups) and warned about.
        Returns the number of groups set to zero (0: the cost was within tolerance)."""
        optimizer = optimizer or self._optimizer()
        graph, removed, plain, cost = self.measure(rounded=False)
        if cost <= self.budget * (1 + self.tolerance):
            return 0
        extra = cost - plain  # what carriers and rounding add on top of the plain cost
        groups = trim_groups(group_scores(graph, optimizer), removed,
                             lambda chosen: self.cost(graph, chosen),
                             target=self.budget - extra,
                             low=self.budget * (1 - self.tolerance) - extra,
                             high=self.budget * (1 + self.tolerance) - extra)
        self._zero_groups(optimizer, groups, beta=False)
        for group in groups:
            self._lock_step.setdefault(int(group), self._done)
        self._revived.difference_update(int(g) for g in groups)
        self.enforce(optimizer)
        after = self.measure()[3]
        self.history.append({
            "step": self._done, self.metric: int(after), "target": float(self.budget),
            f"{self.metric}_fraction": after / self.start_cost, "rho": self.rho_min,
            "planned_fraction": after / self.start_cost, "trimmed": int(groups.size)})
        warnings.warn(
            f"CostTarget: training ended at {cost:,} {self.metric}, {cost / self.budget - 1:+.1%} "
            f"against the budget of {self.budget:,}; the {groups.size} channel group(s) of "
            f"smallest |γ|/λ were set to γ = 0 to meet it ({after / self.budget - 1:+.1%}). "
            "Train longer, or reach the budget earlier (a smaller reach_at), so that training "
            "absorbs the removal; final_trim=False leaves the model as trained.",
            UserWarning, stacklevel=2)
        return int(groups.size)

    def set_slimming_threshold(self, optimizer: Any) -> dict[str, np.ndarray]:
        """With :class:`~tf_gamma_prune.NetworkSlimming`: the global |γ| threshold that meets
        the budget (Network Slimming's prune step), applied by setting the γ below it to 0.

        The smallest-|γ| channels of the penalised layers, all layers pooled
        (:func:`~tf_gamma_prune.gamma_threshold_selection`), are removed until the
        cost of what ``prune_model`` builds is at most the budget (bisection on the
        number removed); their γ become 0, so ``prune_model(model)`` removes them,
        folding their β instead of dropping it. Returns the selection (also
        :attr:`selection`). Called by ``on_train_end``.
        """
        model = model_being_trained(self.model)
        graph = self.measure_graph()
        names = [name for name, _ in optimizer._state.targets]
        selection, cost = slimming_selection(model, graph, names,
                                             lambda removed: self.rounded_cost(graph, removed),
                                             self.budget)
        zero_dropped_gamma(dict(batchnorm_layers(model)), selection)
        final = self.measure()[3]
        self.selection = selection
        self.history.append({"step": self._iterations(optimizer) - self._start_iteration,
                             self.metric: int(final), "target": float(self.budget),
                             f"{self.metric}_fraction": final / self.start_cost, "rho": 0.0,
                             "planned_fraction": cost / self.start_cost})
        return selection

    def _catch_up(self, optimizer: Any) -> None:
        """Do the work due after the steps run so far: measure and adapt at every
        ``every``-th step, and hold the locked channels at zero.

        Runs before each step (not after), so a checkpoint taken at the end of a
        step holds the state from before this work, and a resumed run redoes it.
        """
        done = self._iterations(optimizer) - self._start_iteration
        if done == self._done:
            return
        self._done = done
        self.enforce(optimizer)
        if done >= self._next_measure:
            self.adapt()

    def enforce(self, optimizer: Any | None = None) -> None:
        """Lock every penalised channel whose γ is zero now, and set the γ of the
        locked channels back to zero and their β (the constant they output) back
        to its value when they were locked."""
        optimizer = optimizer or self._optimizer()
        for name, variable, _ in optimizer.targets:
            groups = (self._layer_groups or {}).get(name)
            if groups is None:
                continue
            value = np.asarray(keras.ops.convert_to_numpy(variable))
            zero = value == 0
            if self._revived:
                revived = np.isin(groups, list(self._revived))
                for group in np.unique(groups[revived & ~zero]):
                    self._revived.discard(int(group))  # back: an ordinary channel again
                zero &= ~np.isin(groups, list(self._revived))
            old = self._locked.get(name)
            if old is None:
                old = self._locked[name] = np.zeros(zero.shape, bool)
            beta = (self._betas or {}).get(name)
            beta_value = None if beta is None else np.asarray(keras.ops.convert_to_numpy(beta))
            new = zero & ~old
            if new.any():
                for group in np.unique(groups[new]):
                    self._lock_step.setdefault(int(group), self._done)
                self._locked[name] = old | zero
                if beta_value is not None:
                    frozen = self._frozen_beta.setdefault(name, np.zeros(zero.shape, np.float64))
                    frozen[new] = beta_value[new]
            if np.any(value[old] != 0):
                variable.assign(np.where(old, np.zeros_like(value), value))
            if beta_value is not None and old.any() and name in self._frozen_beta:
                frozen = self._frozen_beta[name].astype(beta_value.dtype)
                if np.any(beta_value[old] != frozen[old]):
                    beta.assign(np.where(old, frozen, beta_value))

    def adapt(self) -> float:
        """Measure the cost, set ρ for the next window; returns the new ρ."""
        optimizer = self._optimizer()
        step = self._done = max(self._done, 0)
        self._next_measure = (step // self.every + 1) * self.every
        if self.total_steps and step >= self.total_steps:
            return self._measure_and_hold(optimizer, step)
        if self.round_to > 1 and not self._aligned and self._alignment_due(step):
            self.align_widths(optimizer)
        if self._aligned:
            return self._measure_and_hold(optimizer, step)
        graph, removed, plain, cost = self.measure(rounded=False)
        overhead = cost - plain  # carriers kept back by the fold
        scores = group_scores(graph, optimizer)
        learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        iterations = self._iterations(optimizer)
        self._update_push(scores, iterations)
        target = self.scheduled_cost(step + self.lookahead * self.every)
        band = self.tolerance / 2 * self.budget
        threshold, planned = 0.0, float(cost)
        # the last window: nothing after it can revive an overshoot, so a cost already within
        # tolerance is held (a tiny model's one channel can be 10 % of its MACs)
        last = bool(self.total_steps) and self._next_measure >= self.total_steps
        if last and cost <= self.budget * (1 + self.tolerance):
            target = max(target, float(cost))
        if cost > target + band:
            push = np.maximum(np.nan_to_num(self._push, nan=0.0), 0.0)
            threshold, planned = self.threshold_for(graph, scores + self.push_gain * push,
                                                    target - overhead, removed)
            planned += overhead
            if cost > self.budget * (1 + self.tolerance) and self.cost(
                    graph, removed | np.isfinite(scores)) >= plain:
                self._warn_stuck(cost)
        elif self.revive and cost < self.budget - band:
            planned = float(self._revive(graph, removed, plain, self.budget - overhead)) + overhead
        window = max(1, self._next_measure - step)
        if threshold <= 0:
            rho = self.rho_min  # nothing to remove (a zero learning rate included)
        else:
            rho = threshold / (window * learning_rate) if learning_rate > 0 else self.rho_max
        if threshold > 0 and self._rho_active is not None:  # new heights: 1.5x at a time
            rho = min(rho, max(self._rho_peak, self.rho_growth * self._rho_active))
        rho = min(self.rho_max, max(self.rho_min, rho))
        if threshold > 0:
            self._rho_active = float(rho)
            self._rho_peak = max(self._rho_peak, float(rho))
        optimizer.rho = rho
        # the push-back is measured over windows that shrink: during a hold the
        # channels rebound, which says nothing about how they resist a shrink
        self._last = (scores, iterations, float(rho) * learning_rate) if threshold > 0 else None
        self.history.append({
            "step": step, self.metric: int(cost), "target": float(target),
            f"{self.metric}_fraction": cost / self.start_cost, "rho": float(rho),
            "planned_fraction": planned / self.start_cost})
        return rho

    def _alignment_due(self, step: int) -> bool:
        """Whether the schedule has reached the budget (or this is the last window)."""
        total = self.total_steps or 0
        return step >= self.reach_at * total or self._next_measure >= total

    def align_widths(self, optimizer: Any | None = None) -> np.ndarray:
        """``round_to``: move every width to a multiple of it within the budget, now
        (see :func:`~tf_gamma_prune.prune.width_alignment.aligned_removal`):
        every removed channel gets γ = β = 0 (a kept β would need a carrier tile) and
        is locked, those to bring back (and
        the zero-γ channels that fill a started block) get a small γ and train
        again, so the model's own widths are multiples of ``round_to``. The fold's
        carriers are an overhead on the budget, measured before. Warns when the
        aligned model misses the budget by more than ``tolerance`` (carriers the
        alignment made necessary). Returns the removed groups; later windows hold
        them."""
        optimizer = optimizer or self._optimizer()
        graph, removed, _, cost = self.measure()
        carriers = cost - self.rounded_cost(graph, removed)
        order = np.full(graph.num_groups, -1.0)
        for group, step in self._lock_step.items():
            order[group] = step
        aligned = aligned_removal(graph, removed, group_scores(graph, optimizer), self.round_to,
                                  self.budget - carriers, self.cost, tolerance=self.tolerance,
                                  revive_order=order)
        final = rounded_removal(graph, aligned, self.round_to)  # the blocks' fills kept too
        # every removed channel, old or new, to γ = β = 0: nothing for the fold to carry (a
        # carrier would cost a whole tile); a BN after the next layer absorbs the lost constant
        self._zero_groups(optimizer, np.flatnonzero(final))
        back = np.flatnonzero(removed & ~final)
        for group in back:
            self._unlock(int(group))
        self._wake_groups(optimizer, back)
        self.enforce(optimizer)  # locks the new zeros
        self._aligned = True
        cost = self.measure()[3]
        if abs(cost - self.budget) > self.tolerance * self.budget:
            warnings.warn(
                f"CostTarget(round_to={self.round_to}): the aligned model costs {cost:,} "
                f"{self.metric}, {cost / self.budget - 1:+.1%} against the budget of "
                f"{self.budget:,}. Under fold={self.fold!r} the constants of removed channels "
                "may need carriers (a block each) or border corrections; GammaISTA("
                "scale_beta=True) fades removed channels to 0 (nothing to carry), or use "
                "fold='bias'.", UserWarning, stacklevel=2)
        return final

    def _channel_masks(self, optimizer: Any, groups: np.ndarray):
        """``(name, γ variable, mask)`` for every penalised layer with channels in ``groups``."""
        if groups.size == 0:
            return
        for name, variable, _ in optimizer.targets:
            layer_groups = (self._layer_groups or {}).get(name)
            mask = None if layer_groups is None else np.isin(layer_groups, groups)
            if mask is not None and mask.any():
                yield name, variable, mask

    def _wake_groups(self, optimizer: Any, groups: np.ndarray) -> None:
        """γ = 1 % of the layer's mean nonzero |γ| and β = max(β, 0) for the channels of
        ``groups``, so they can grow back: before a ReLU, a channel at γ = 0 with β ≤ 0
        outputs 0 and gets no gradient (it would stay removed, and uncounted)."""
        for name, variable, mask in self._channel_masks(optimizer, groups):
            value = np.asarray(keras.ops.convert_to_numpy(variable)).copy()
            alive = np.abs(value[value != 0])
            value[mask] = 0.01 * (float(alive.mean()) if alive.size else 1.0)
            variable.assign(value)
            beta = (self._betas or {}).get(name)
            if beta is not None:
                b = np.asarray(keras.ops.convert_to_numpy(beta)).copy()
                b[mask] = np.maximum(b[mask], 0)
                beta.assign(b)

    def _zero_groups(self, optimizer: Any, groups: np.ndarray, beta: bool = True) -> None:
        """γ = β = 0 for every penalised channel of ``groups`` (their β held at 0 once
        locked): removed as a plain pruning would remove them (output 0 before the
        activation, nothing for the fold to carry; a kept β would need carriers under
        fold="auto", each a block of ``round_to``). ``beta=False``: γ only (ISTA's own
        removal, the constant β carried by the fold)."""
        for name, variable, mask in self._channel_masks(optimizer, groups):
            shift = (self._betas or {}).get(name) if beta else None
            for var in [variable] + ([] if shift is None else [shift]):
                value = np.asarray(keras.ops.convert_to_numpy(var)).copy()
                value[mask] = 0
                var.assign(value)
            if beta and name in self._frozen_beta:
                self._frozen_beta[name][mask] = 0.0

    def _measure_and_hold(self, optimizer: Any, step: int) -> float:
        """Measure and record the cost at ρ = ``rho_min``, nothing removed or revived: after
        :meth:`align_widths` (the widths stay tiled) and at the end of the run (a channel
        revived then would never train; an overshoot is :meth:`trim_to_budget`'s)."""
        cost = self.measure()[3]
        optimizer.rho = self.rho_min
        self._last = None
        self.history.append({
            "step": step, self.metric: int(cost), "target": float(self.budget),
            f"{self.metric}_fraction": cost / self.start_cost, "rho": float(self.rho_min),
            "planned_fraction": cost / self.start_cost})
        return self.rho_min

    def _revive(self, graph: ChannelGraph, removed: np.ndarray, cost: int, budget: float) -> int:
        """Unlock the most recently locked groups that bring the cost closest to ``budget``."""
        locked_groups = sorted(self._lock_step, key=lambda g: (-self._lock_step[g], g))
        removed = removed.copy()
        woken = []
        for group in locked_groups:
            if not removed[group] or graph.pinned[group]:
                continue
            removed[group] = False
            new = self.cost(graph, removed)
            if abs(new - budget) < abs(cost - budget):
                cost = new
                self._unlock(group)
                self._revived.add(group)
                woken.append(group)
            else:
                removed[group] = True
            if cost >= budget - self.tolerance / 4 * self.budget:
                break
        self._wake_groups(self._optimizer(), np.array(woken, int))
        return cost

    def _unlock(self, group: int) -> None:
        self._lock_step.pop(group, None)
        for name, groups in (self._layer_groups or {}).items():
            if name in self._locked:
                self._locked[name] = self._locked[name] & (groups != group)

    def _update_push(self, scores: np.ndarray, iterations: int) -> None:
        """Per group: how far |γ|/λ ended above where last window's shrink alone put it."""
        if self._push is None or self._push.shape != scores.shape:
            self._push = np.full(scores.shape, np.nan)
        if self._last is None or self._last[0].shape != scores.shape:
            return
        previous, start, shrink_per_step = self._last
        shrink = shrink_per_step * (iterations - start)
        ok = np.isfinite(previous) & np.isfinite(scores) & (previous > 0) & (scores > 0)
        measured = np.minimum(scores[ok] - (previous[ok] - shrink), shrink)  # grown back: held
        known = np.isfinite(self._push[ok])
        a = self.push_smoothing
        self._push[ok] = np.where(known, (1 - a) * np.nan_to_num(self._push[ok]) + a * measured,
                                  measured)

    def _warn_stuck(self, cost: int) -> None:
        if self._warned:
            return
        self._warned = True
        warnings.warn(
            f"CostTarget: every channel that may go is gone and the model still costs {cost:,} "
            f"{self.metric}, above the budget of {self.budget:,} (the reachable minimum is "
            f"{cost / self.start_cost:.1%} of the start). Lower GammaISTA(min_channels=...), "
            "penalise the excluded layers, or ask for a larger budget.", UserWarning, stacklevel=2)

    def threshold_for(self, graph: Any, scores: Any, target: float,
                      removed: np.ndarray | None = None) -> tuple[float, float]:
        """The threshold on ``scores`` (per group; an optimizer: its ``|γ|/λ``) whose groups,
        removed with ``removed``, bring the cost closest to ``target``; and that cost."""
        if not isinstance(scores, np.ndarray):
            scores = group_scores(graph, scores)
        base = np.zeros(graph.num_groups, bool) if removed is None else removed
        return closest_threshold(scores, target, lambda chosen: self.cost(graph, chosen), base)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.history:
            logs["rho"] = self.history[-1]["rho"]
            logs[f"pruned_{self.metric}_fraction"] = self.history[-1][f"{self.metric}_fraction"]

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """The controller's state as JSON-ready values (see :meth:`set_state`)."""
        def floats(a: np.ndarray | None) -> list | None:
            return None if a is None else [float(v) if math.isfinite(v) else None for v in a]

        last = None if self._last is None else {
            "scores": floats(self._last[0]), "iteration": self._last[1], "shrink": self._last[2]}
        return {
            "format": _STATE_FORMAT, "metric": self.metric, "total_steps": self.total_steps,
            "start_cost": self.start_cost, "budget": self.budget, "reachable": self.reachable,
            "start_iteration": self._start_iteration, "done": self._done,
            "next_measure": self._next_measure,
            "locked": {k: np.flatnonzero(v).tolist() + [-len(v) - 1]
                       for k, v in self._locked.items()},
            "lock_step": {str(k): v for k, v in self._lock_step.items()},
            "push": floats(self._push), "last": last, "warned": self._warned,
            "revived": sorted(self._revived),
            "frozen_beta": {k: floats(v) for k, v in self._frozen_beta.items()},
            "rho_active": self._rho_active, "rho_peak": self._rho_peak,
            "aligned": self._aligned, "history": [dict(h) for h in self.history],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`get_state`, e.g. in another process)."""
        if state.get("format") != _STATE_FORMAT or state.get("metric") != self.metric:
            raise ArgumentError(
                f"This CostTarget state is for a {state.get('metric')!r} budget (format "
                f"{state.get('format')!r}); this CostTarget has a {self.metric!r} budget.")

        def array(values: list | None) -> np.ndarray | None:
            return None if values is None else np.array(
                [np.nan if v is None else v for v in values], float)

        def mask(indices: list[int]) -> np.ndarray:
            out = np.zeros(-indices[-1] - 1, bool)
            out[indices[:-1]] = True
            return out

        self._reset_state()
        self.total_steps = state["total_steps"] or self.total_steps
        self.start_cost, self.budget, self.reachable = (
            state["start_cost"], state["budget"], state["reachable"])
        self._start_iteration, self._done = state["start_iteration"], state["done"]
        self._next_measure = state["next_measure"]
        self._locked = {k: mask(v) for k, v in state["locked"].items()}
        self._lock_step = {int(k): v for k, v in state["lock_step"].items()}
        self._push = array(state["push"])
        last = state["last"]
        if last is not None:
            self._last = (array(last["scores"]), last["iteration"], last["shrink"])
        self._warned = state["warned"]
        self._revived = set(state["revived"])
        self._rho_active, self._rho_peak = state["rho_active"], state["rho_peak"]
        self._aligned = bool(state.get("aligned", False))
        self._frozen_beta = {k: np.nan_to_num(array(v)) for k, v in state["frozen_beta"].items()}
        self.history = [dict(h) for h in state["history"]]

    def get_config(self) -> dict[str, Any]:
        return {"macs": self.macs, "params": self.params_budget, "latency_ms": self.latency_ms,
                "latency": self.latency,
                "table": None if self.table is None else self.table.to_json(), "every": self.every,
                "reach_at": self.reach_at, "lookahead": self.lookahead, "rho_min": self.rho_min,
                "rho_max": self.rho_max, "tolerance": self.tolerance,
                "total_steps": self.total_steps, "push_gain": self.push_gain,
                "push_smoothing": self.push_smoothing, "rho_growth": self.rho_growth,
                "fold": self.fold,
                "carrier_tile": self.carrier_tile, "unknown_layers": self.unknown_layers,
                "round_to": self.round_to, "revive": self.revive, "final_trim": self.final_trim,
                "state": self.get_state()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CostTarget":
        config = dict(config)
        state = config.pop("state", None)
        target = cls(**config)
        if state is not None:
            target.set_state(state)
        return target


def _is_slimming(optimizer: Any) -> bool:
    from tf_gamma_prune.sparsify.slimming import NetworkSlimming

    return isinstance(optimizer, NetworkSlimming)


def _latency_budget(latency_ms: Any, latency: Any) -> tuple[float | None, float | None]:
    if latency_ms is not None and (isinstance(latency_ms, bool) or not isinstance(latency_ms, (int, float))
                                   or not latency_ms > 0):
        raise ArgumentError(f"latency_ms must be a positive number of milliseconds, got {latency_ms!r}.")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, (int, float))
                                or not 0 < latency < 1):
        raise ArgumentError(f"latency must be a fraction in (0, 1) of the model's predicted latency "
                            f"when training starts, got {latency!r}; for milliseconds use latency_ms=.")
    return (None if latency_ms is None else float(latency_ms)), (None if latency is None else float(latency))


def _latency_table(table: Any, needed: bool) -> LatencyTable | None:
    if table is None:
        if needed:
            raise ArgumentError("A latency budget needs table=...: a LatencyTable measured for this "
                                "model, e.g. tf_gamma_prune.export.measure_latency_table(model), its "
                                "to_json() dict, or the path of a saved table.")
        return None
    if isinstance(table, LatencyTable):
        return table
    if isinstance(table, str):
        return LatencyTable.load(table)
    return LatencyTable.from_json(table)
