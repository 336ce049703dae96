"""Single-shot ADMM filter pruning: train towards ``k_l`` filters per layer, prune once.

The seed notes (Wang et al.; *abstract only — the formulation below is our
reading and unverified*): train with the ADMM penalty::

    ρ/2 · ‖W − Z + U‖²       for every pruned layer's kernel W

where ``Z`` is the projection of ``W + U`` onto kernels with at most ``k_l``
non-zero filters (the ``k_l`` with the largest L2 norms are kept, the others
zeroed) and ``U`` the scaled dual variable. Every ``update_every`` training
steps: ``Z ← Π_k(W + U)``, then ``U ← U + W − Z``. The penalty pulls the
filters outside the projection towards 0, so that afterwards **one** L1-norm
selection at the target widths (:func:`admm_selection`) and **one** fine-tune
replace the usual prune/fine-tune loop.

Our addition for conv + BatchNormalization networks (``with_batchnorm=True``,
the default): BN divides a filter's norm out, so the γ of the BN right after a
target layer joins its filters in ``W``, ``Z`` and ``U`` (see
:class:`ADMMFilterPruning`). The pruned channels then end as constants ≈ β,
which ``prune_model(model, selection, calibration_data=x)`` folds into the next
layer; prune with ``calibration_data``, then fine-tune.

The pieces:

* :func:`admm_targets_for_macs` — per-layer targets ``k_l`` from a global MAC
  budget: the uniform per-layer fraction of ``l1_norm_selection`` whose pruned
  model has ``macs_fraction`` of the MACs (bisection, exact MAC counts from
  :mod:`tf_gamma_prune.analysis.flops`). Uniform per-layer fractions are our
  choice; the paper's allocation is unverified.
* :class:`ADMMFilterPruning` — the Keras callback: it creates ``Z`` and ``U``,
  installs the penalty and does the ``Z``/``U`` updates.
* :func:`filter_projection` — the projection ``Π_k``.
* :func:`admm_selection` — after training, the ``k_l`` filters with the largest
  kernel L1 norm per layer (``l1_norm_selection`` layer by layer), for
  ``prune_model``.

**Mechanism (a design choice).** The penalty is a regulariser object that the
callback sets as the kernels' ``variable.regularizer`` for the duration of
``fit`` (``Z``, ``U`` and ``ρ`` are non-trainable Keras variables it reads), so
Keras adds it to the loss like a ``kernel_regularizer``: it goes through the
optimizer (momentum, Adam...) with the data gradient, it is scaled for
``tf.distribute`` by Keras itself, and the layer configs — hence saved models —
never mention it (an existing kernel regulariser is kept and added to). The
train function is re-made when the penalty is installed and removed. On the
JAX backend a traced train step sees variables outside the model as
constants, so each ``Z``/``U`` update re-makes (re-traces) the train step —
seconds per update on small models; use a large ``update_every`` there.

Example:

>>> import keras, numpy as np
>>> from tf_gamma_prune import count_macs, prune_model
>>> from tf_gamma_prune.reference_models import fashion_vgg
>>> model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
>>> targets = admm_targets_for_macs(model, 0.5)
>>> targets["conv1"] < 8
True
>>> admm = ADMMFilterPruning(targets, rho=0.05, update_every=2)
>>> model.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
>>> x, y = np.random.rand(16, 28, 28, 1), np.arange(16) % 10
>>> _ = model.fit(x, y, batch_size=8, epochs=1, callbacks=[admm], verbose=0)
>>> small = prune_model(model, admm_selection(model, targets), probe=False)
>>> abs(count_macs(small) / count_macs(model) - 0.5) <= 0.05 * 0.5
True
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping

import keras
import numpy as np

from tf_gamma_prune.analysis.batchnorm import named_layers, resolve_layer_name
from tf_gamma_prune.analysis.flops import count_macs
from tf_gamma_prune.errors import ArgumentError, CriterionError
from tf_gamma_prune.prune.criteria import l1_norm_selection, selection_for_macs
from tf_gamma_prune.sparsify.distillation import model_being_trained

ops = keras.ops
L = keras.layers

# Layers whose kernel is (..., inputs, filters): the last axis indexes the filters.
_FILTER_LAYERS = (L.Conv1D, L.Conv2D, L.Conv3D, L.Dense)
_NOT_FILTER_LAYERS = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose,
                      L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D,
                      L.SeparableConv2D)


def filter_projection(kernel: Any, k: int) -> Any:
    """``Π_k``: ``kernel`` with all but its ``k`` largest-L2-norm filters set to 0.

    Filters are the slices along the last axis (a conv's output channels). Equal
    norms are broken towards the lower index, so exactly ``k`` filters are kept.
    ``kernel`` may also be a list of arrays sharing the last axis (a kernel and
    the γ of the BatchNormalization after it): the norm of filter ``j`` is then
    taken over all of them together, and all of them are zeroed together.

    >>> w = np.array([[1.0, -3.0, 0.5, 2.0]])
    >>> filter_projection(w, 2).tolist()
    [[0.0, -3.0, 0.0, 2.0]]
    >>> [a.tolist() for a in filter_projection([w, np.array([3.0, 0.0, 0.0, 0.0])], 2)]
    [[[1.0, -3.0, 0.0, 0.0]], [3.0, 0.0, 0.0, 0.0]]
    """
    single = not isinstance(kernel, (list, tuple))
    arrays = [np.asarray(kernel)] if single else [np.asarray(a) for a in kernel]
    n = arrays[0].shape[-1]
    if any(a.shape[-1] != n for a in arrays):
        raise ArgumentError("The arrays of one projection must share the last (filter) axis.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n:
        raise ArgumentError(f"k must be an integer in [0, {n}], got {k!r}.")
    squares = sum(np.sum(np.square(a.reshape(-1, n).astype(np.float64)), axis=0) for a in arrays)
    keep = np.zeros(n, bool)
    keep[np.argsort(-np.sqrt(squares), kind="stable")[:k]] = True
    out = [np.where(keep, a, np.zeros((), a.dtype)).astype(a.dtype) for a in arrays]
    return out[0] if single else out


def admm_targets_for_macs(
    model: keras.Model,
    macs_fraction: float,
    *,
    layers: list[str] | None = None,
    tolerance: float = 0.05,
    unknown_layers: str = "error",
) -> dict[str, int]:
    """Per-layer filter targets ``{conv name: k_l}`` whose pruned model has
    ``macs_fraction`` of ``model``'s MACs (within ``tolerance``, relative).

    The layers are ``l1_norm_selection``'s (default: every conv whose filters can
    be removed on their own; ``layers=`` names others), all cut by the same
    fraction, which is bisected on the exact planned MACs
    (:func:`~tf_gamma_prune.selection_for_macs`). Only the widths are used, not
    which filters the current weights would pick.

    Raises:
        ArgumentError: ``macs_fraction`` outside (0, 1]; the MACs are not static.
        TargetUnreachableError: no uniform fraction reaches the budget.
    """
    if isinstance(macs_fraction, bool) or not isinstance(macs_fraction, (int, float)) \
            or not 0 < float(macs_fraction) <= 1:
        raise ArgumentError(f"macs_fraction must be in (0, 1], got {macs_fraction!r}.")
    total = count_macs(model)
    if total is None:
        raise ArgumentError(
            f"The MACs of model '{model.name}' are not static; build it with a fixed input "
            "shape to set targets from a MAC budget.")
    target = max(1, int(round(float(macs_fraction) * total)))
    kwargs = {} if layers is None else {"layers": layers}
    selection, _ = selection_for_macs(model, l1_norm_selection, target, tolerance=tolerance,
                                      unknown_layers=unknown_layers, **kwargs)
    return {name: int(len(keep)) for name, keep in selection.items()}


def admm_selection(model: keras.Model, targets: Mapping[str, int], *,
                   unknown_layers: str = "error") -> dict[str, np.ndarray]:
    """The single L1-norm selection after ADMM training: per target layer, the
    ``k_l`` filters with the largest kernel L1 norm (``l1_norm_selection`` at
    that layer's width), for ``prune_model(model, selection)``.

    Raises:
        CriterionError: a target layer ``l1_norm_selection`` cannot prune on its
            own, or a width it cannot reach exactly (pinned channels).
    """
    found = dict(_target_layers(model, targets))
    selection: dict[str, np.ndarray] = {}
    for name, (layer, k) in found.items():
        n = int(layer.kernel.shape[-1])
        part = l1_norm_selection(model, (n - k) / n, layers=[name], unknown_layers=unknown_layers)
        for key, keep in part.items():
            if len(keep) != k:
                raise CriterionError(
                    f"l1_norm_selection keeps {len(keep)} filters of '{key}', not the target "
                    f"{k}: some of its channels are pinned or tied to other layers.")
            selection[key] = keep
    return selection


class _ADMMPenalty(keras.regularizers.Regularizer):
    """``ρ/2·‖W − Z + U‖²`` (plus the kernel's own regulariser, if it had one)."""

    def __init__(self, rho, z, u, previous=None):
        self.rho, self.z, self.u, self.previous = rho, z, u, previous

    def __call__(self, w):
        w = ops.cast(w, "float32")
        diff = w - ops.convert_to_tensor(self.z) + ops.convert_to_tensor(self.u)
        value = 0.5 * ops.convert_to_tensor(self.rho) * ops.sum(ops.square(diff))
        if self.previous is not None:
            value = value + ops.cast(self.previous(w), "float32")
        return value

    def get_config(self):  # never serialised: it lives on variables, not in layer configs
        return {}


class ADMMFilterPruning(keras.callbacks.Callback):
    """Keras callback: ADMM training towards at most ``k_l`` non-zero filters per layer.

    Args:
        targets: ``{layer name: k_l}`` for Conv1D/2D/3D or Dense layers
            (qualified or unique bare names), e.g. from
            :func:`admm_targets_for_macs`.
        rho: the penalty strength ρ (> 0), relative to the training loss. Too
            small and the filters outside the projection keep their norm; too
            large and ``Z`` freezes on the first projection's choice.
        update_every: training steps (batches) between ``Z``/``U`` updates.
        rho_growth: ρ is multiplied by this after every update (≥ 1; 1: fixed ρ).
            A growing ρ drives the kernels onto the projection by the end of
            training (a common ADMM practice; the paper's schedule is unverified).
        with_batchnorm: also constrain the γ of a BatchNormalization that alone
            reads a target layer's output (default on; our addition, see below).

    **BatchNormalization after the conv** (``with_batchnorm``). A BN directly
    after a conv divides out the filter's norm: a filter shrunk 100× gives the
    same normalised channel, so the penalty on ``W`` alone fights the data
    gradient (which grows as the norm shrinks) and the "pruned" filters stay
    alive. So the ADMM variable of output channel ``j`` is the filter
    ``W[..., j]`` *together with* that BN's ``γ_j``: the projection ranks
    channels by their joint norm and zeroes both, the penalty pulls both. With
    ``γ_j → 0`` the channel becomes the constant ``β_j``, which
    ``prune_model(..., calibration_data=x)`` folds into the next layer almost
    exactly. ``with_batchnorm=False`` is the plain formulation on ``W``.

    At the start of the first ``fit``: ``Z = Π_k(W)``, ``U = 0``. ``Z``, ``U``,
    ``ρ`` and the step count persist across ``fit`` calls with the same callback
    (the penalty is only installed during ``fit``). ``selection()`` gives the
    pruning selection afterwards.

    Raises:
        ArgumentError: bad ``rho`` / ``update_every`` / ``rho_growth`` (at
            construction); unknown layer names, layers without a filter-last
            kernel, widths outside ``[1, filters]`` (at the start of ``fit``).
    """

    def __init__(self, targets: Mapping[str, int], rho: float = 1e-3, update_every: int = 100,
                 rho_growth: float = 1.0, with_batchnorm: bool = True):
        super().__init__()
        if not isinstance(targets, Mapping) or not targets:
            raise ArgumentError(
                "targets must be a non-empty mapping {conv layer name: filters to keep}, e.g. "
                "admm_targets_for_macs(model, 0.5).")
        self.targets = dict(targets)
        self.rho = _positive("rho", rho)
        if isinstance(update_every, bool) or not isinstance(update_every, (int, np.integer)) \
                or update_every < 1:
            raise ArgumentError(f"update_every must be an integer >= 1, got {update_every!r}.")
        self.update_every = int(update_every)
        self.rho_growth = _positive("rho_growth", rho_growth)
        if self.rho_growth < 1.0:
            raise ArgumentError(f"rho_growth must be >= 1, got {rho_growth}.")
        self.with_batchnorm = bool(with_batchnorm)
        self.steps = 0
        self.updates = 0
        self._entries: list[dict[str, Any]] = []
        self._rho_variable = None
        self._owner = None

    # ------------------------------------------------------------------ state
    @property
    def current_rho(self) -> float:
        """ρ now (after ``rho_growth`` updates)."""
        if self._rho_variable is None:
            return self.rho
        return float(ops.convert_to_numpy(self._rho_variable))

    def state(self) -> dict[str, dict[str, Any]]:
        """Per target layer: ``{"z": Z, "u": U, "batchnorm": name or None, "gamma_z": ...,
        "gamma_u": ...}`` as NumPy arrays (after the first ``fit``)."""
        out = {}
        for e in self._entries:
            parts = [(np.asarray(ops.convert_to_numpy(p["z"])),
                      np.asarray(ops.convert_to_numpy(p["u"]))) for p in e["parts"]]
            item = {"z": parts[0][0], "u": parts[0][1], "batchnorm": e["batchnorm"]}
            if len(parts) > 1:
                item["gamma_z"], item["gamma_u"] = parts[1]
            out[e["name"]] = item
        return out

    def selection(self, model: keras.Model | None = None) -> dict[str, np.ndarray]:
        """:func:`admm_selection` of ``model`` (default: the trained one) at the targets."""
        model = model if model is not None else self._owner
        if model is None:
            raise ArgumentError("Train with the callback first, or pass the model.")
        return admm_selection(model, self.targets)

    # -------------------------------------------------------------- callbacks
    def on_train_begin(self, logs=None):
        model = model_being_trained(self.model)
        if self._owner is not model:
            self._create(model)
        for entry in self._entries:
            for part in entry["parts"]:
                variable = part["variable"]
                part["previous"] = variable.regularizer
                variable.regularizer = _ADMMPenalty(self._rho_variable, part["z"], part["u"],
                                                    part["previous"])
        self.model.make_train_function(force=True)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps % self.update_every == 0:
            self.update()

    def on_train_end(self, logs=None):
        for entry in self._entries:
            for part in entry["parts"]:
                part["variable"].regularizer = part.pop("previous", None)
        self.model.make_train_function(force=True)

    def update(self) -> None:
        """One dual step now: ``Z ← Π_k(W + U)``, ``U ← U + W − Z``, ``ρ ← ρ·growth``.

        The callback calls it every ``update_every`` steps."""
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        for entry in self._entries:
            ws = [np.asarray(ops.convert_to_numpy(p["variable"]), np.float32)
                  for p in entry["parts"]]
            us = [np.asarray(ops.convert_to_numpy(p["u"]), np.float32) for p in entry["parts"]]
            zs = filter_projection([w + u for w, u in zip(ws, us)], entry["k"])
            for part, w, u, z in zip(entry["parts"], ws, us, zs):
                part["z"].assign(z)
                part["u"].assign(u + w - z)
        if self.rho_growth != 1.0:
            self._rho_variable.assign(self.current_rho * self.rho_growth)
        self.updates += 1
        if keras.backend.backend() == "jax" and self.model is not None:
            self.model.make_train_function(force=True)  # Z, U, ρ are trace-time constants

    # ---------------------------------------------------------------- helpers
    def _create(self, model: keras.Model) -> None:
        found = _target_layers(model, self.targets)
        batchnorms = _batchnorms_after(model) if self.with_batchnorm else {}
        strategy = getattr(self.model, "distribute_strategy", None)
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        entries = []
        with scope:
            self._rho_variable = keras.Variable(self.rho, dtype="float32", trainable=False,
                                                name="admm_rho")
            for name, (layer, k) in found:
                variables = [layer.kernel]
                bn = batchnorms.get(id(layer))
                if bn is not None and bn[1].gamma.trainable:
                    variables.append(bn[1].gamma)
                ws = [np.asarray(ops.convert_to_numpy(v), np.float32) for v in variables]
                zs = filter_projection(ws, k)
                parts = [{"variable": v,
                          "z": keras.Variable(z, trainable=False, name="admm_z"),
                          "u": keras.Variable(np.zeros_like(w), trainable=False, name="admm_u")}
                         for v, w, z in zip(variables, ws, zs)]
                entries.append({"name": name, "layer": layer, "k": k, "parts": parts,
                                "batchnorm": None if len(parts) == 1 else bn[0]})
        self._entries = entries
        self._owner = model


def _batchnorms_after(model: keras.Model) -> dict[int, tuple[str, Any]]:
    """``{id(layer): (bn name, bn layer)}`` for each layer called once whose output
    is read by nothing but one (single-use) BatchNormalization with a γ."""
    from tf_gamma_prune.analysis.layer_graph import layer_graph

    graph = layer_graph(model)
    out = {}
    for call in graph.calls:
        layer = call.layer
        if not isinstance(layer, _FILTER_LAYERS) or len(graph.calls_of(layer)) != 1:
            continue
        if getattr(layer, "activation", None) not in (None, keras.activations.linear):
            continue
        readers = graph.consumers(call.outputs[0])
        if call.outputs[0] in graph.outputs or len(readers) != 1:
            continue
        bn = readers[0].layer
        if isinstance(bn, L.BatchNormalization) and bn.scale and len(graph.calls_of(bn)) == 1:
            out[id(layer)] = (readers[0].name, bn)
    return out


def _target_layers(model: keras.Model, targets: Mapping[str, int]) -> list[tuple[str, tuple]]:
    """``[(qualified name, (layer, k))]`` for ``targets``, checked."""
    if not isinstance(targets, Mapping) or not targets:
        raise ArgumentError("targets must be a non-empty mapping {layer name: filters to keep}.")
    by_name = {}
    for name, layer in named_layers(model):
        by_name.setdefault(name, layer)
    out = []
    for key, k in targets.items():
        name = resolve_layer_name(key, list(by_name))
        layer = by_name[name]
        if isinstance(layer, _NOT_FILTER_LAYERS) or not isinstance(layer, _FILTER_LAYERS):
            raise ArgumentError(
                f"'{name}' ({type(layer).__name__}) has no (..., inputs, filters) kernel; "
                "ADMM filter pruning takes Conv1D/2D/3D and Dense layers.")
        n = int(layer.kernel.shape[-1])
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
            raise ArgumentError(
                f"targets['{key}'] must be an integer in [1, {n}] (the filters of '{name}'), "
                f"got {k!r}.")
        out.append((name, (layer, int(k))))
    return out


def _positive(what: str, value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{what} must be a number, got {value!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise ArgumentError(f"{what} must be finite and > 0, got {value}.")
    return value
