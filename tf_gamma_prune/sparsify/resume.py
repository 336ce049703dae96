"""Exact resumption of an interrupted ``model.fit``, mid-epoch included.

Keras' ``BackupAndRestore(save_freq=N)`` restores weights and optimizer state after
a crash but restarts the interrupted epoch *from its first batch*: the batches of
that epoch trained on before the last backup are trained on a second time, so the
resumed run ends with other weights (and possibly another γ zero pattern) than an
uninterrupted one. It is exact only when the interruption falls on an epoch
boundary and every epoch sees the same batches.

This module resumes at the batch:

* :class:`StepCheckpoint` is a callback that writes, every ``save_freq`` training
  steps and at each epoch end, one file (atomically) holding every model variable
  (weights, BatchNormalization moving statistics, the states of dropout/augmentation
  seed generators), every optimizer variable (for :class:`GammaISTA`: its ρ, the
  inner optimizer's iterations, learning rate and slots) and the position
  ``(epoch, batches done in that epoch)``. On ``on_train_begin`` of a fresh process
  it restores all of them.
* :func:`fit_resumable` runs ``model.fit`` one epoch at a time from that position,
  skipping the batches the interrupted run had already consumed.

What makes the result bit-equal to an uninterrupted run:

1. the data of an epoch is a deterministic function of the epoch index alone:
   ``epoch_data(epoch)`` returns the same batches in the same order in every
   process (e.g. ``ds.shuffle(n, seed=1000 + epoch).batch(b)``; a single
   ``reshuffle_each_iteration`` dataset is *not*: its order depends on how many
   times it was iterated in this process);
2. deterministic kernels: ``keras.utils.set_random_seed(s)`` and
   ``tf.config.experimental.enable_op_determinism()`` (process-global) before the
   model is built, in both runs;
3. the same model code, compile arguments and ``save_freq``-independent callbacks.

Callbacks with a JSON state: a callback passed to :func:`fit_resumable` (or to
``StepCheckpoint(callbacks=...)``) that has ``get_state()`` and ``set_state(state)``
— :class:`~tf_gamma_prune.CostTarget` does — has that state saved in the same file
and restored with the variables, so a controller steering ρ continues exactly.

Not restored: the running means of the epoch's compiled metrics (the resumed epoch's
logged loss averages only the batches run after the restart), and the internal state
of other callbacks (``ReduceLROnPlateau``, ``EarlyStopping`` ... restart from
scratch; step-based learning-rate and ρ schedules are exact because the optimizer's
``iterations`` is restored).

Example:

>>> import tempfile, keras, numpy as np, tensorflow as tf
>>> from tf_gamma_prune import GammaISTA
>>> from tf_gamma_prune.sparsify.resume import StepCheckpoint, fit_resumable
>>> x, y = np.ones((32, 4), "float32"), np.zeros((32, 1), "float32")
>>> def epoch_data(epoch):  # same batches for the same epoch, in every process
...     return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(32, seed=epoch).batch(8)
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4),
...     keras.layers.BatchNormalization(), keras.layers.Dense(1)])
>>> model.compile(GammaISTA(keras.optimizers.SGD(0.1), rho=0.1), loss="mse")
>>> checkpoint = StepCheckpoint(tempfile.mkdtemp() + "/run.ckpt.npz", save_freq=2)
>>> history = fit_resumable(model, epoch_data, epochs=2, checkpoint=checkpoint, verbose=0)
>>> checkpoint.position()  # after a crash, a new process picks up from here
TrainingPosition(epoch=2, step=0)
>>> history.epoch
[0, 1]
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Callable, Sequence

import keras
import numpy as np

from tf_gamma_prune.atomic_io import write_atomic
from tf_gamma_prune.errors import ArgumentError, ResumeError  # noqa: F401

FORMAT = "tf_gamma_prune.sparsify.resume/1"



@dataclasses.dataclass(frozen=True)
class TrainingPosition:
    """Where a run stands: ``step`` batches of epoch ``epoch`` are done."""

    epoch: int = 0
    step: int = 0


def _state_variables(model: keras.Model) -> list[tuple[str, Any]]:
    """Every variable whose value the next training step depends on, in a fixed order."""
    variables = [("model", v) for v in model.variables]
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        variables += [("optimizer", v) for v in optimizer.variables]
    return variables


class StepCheckpoint(keras.callbacks.Callback):
    """Checkpoint the whole training state every ``save_freq`` steps; restore it on start.

    Args:
        path: the checkpoint file (``.npz``), replaced atomically at every save.
        save_freq: save after every ``save_freq`` training steps (and at each epoch end).
        callbacks: callbacks whose ``get_state()`` (JSON values) is saved with the
            variables and given back to their ``set_state`` on restore;
            :func:`fit_resumable` adds the ones it is given.

    Use it through :func:`fit_resumable`, or drive ``model.fit`` yourself: after a
    restore, the next epoch trained must be :meth:`position`'s epoch, with its first
    ``position().step`` batches skipped, ``initial_epoch=position().epoch``.
    Under a multi-worker strategy only the chief writes.
    """

    def __init__(self, path: str | os.PathLike, save_freq: int = 100,
                 callbacks: Sequence[Any] = ()):
        super().__init__()
        if isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1:
            raise ArgumentError(f"save_freq must be a positive number of steps, got {save_freq!r}.")
        self.path = os.fspath(path)
        self.save_freq = save_freq
        self._started = False  # restored or first fit of this process done
        self._expected: TrainingPosition | None = None  # next epoch must start here
        self._epoch = 0
        self._offset = 0  # batches of the current epoch done before this fit call
        self._steps_in_epoch = 0
        self._since_save = 0
        self.stateful: list[Any] = []
        self.track(callbacks)

    def track(self, callbacks: Sequence[Any]) -> None:
        """Save and restore the state of those ``callbacks`` that have
        ``get_state()`` / ``set_state(state)``."""
        for callback in callbacks:
            if (callable(getattr(callback, "get_state", None))
                    and callable(getattr(callback, "set_state", None))
                    and not any(callback is c for c in self.stateful)):
                self.stateful.append(callback)

    # ------------------------------------------------------------- reading
    def _load(self) -> tuple[dict, list[np.ndarray]] | None:
        if not os.path.exists(self.path):
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = [data[f"v{i}"] for i in range(len(meta["paths"]))]
        except Exception as e:  # truncated zip, missing keys, bad JSON
            raise ResumeError(
                f"Cannot read training checkpoint {self.path!r} ({type(e).__name__}: {e}). "
                "Delete it to start from scratch."
            ) from e
        if meta.get("format") != FORMAT:
            raise ResumeError(f"{self.path!r} is not a {FORMAT} checkpoint (format={meta.get('format')!r}).")
        return meta, arrays

    def position(self) -> TrainingPosition:
        """The saved position; ``TrainingPosition(0, 0)`` when there is no checkpoint."""
        loaded = self._load()
        if loaded is None:
            return TrainingPosition()
        return TrainingPosition(int(loaded[0]["epoch"]), int(loaded[0]["step"]))

    def restore(self, model: keras.Model) -> TrainingPosition | None:
        """Load the checkpoint into ``model`` and its optimizer (built here if needed).

        Returns the restored position, or ``None`` when there is no checkpoint.
        """
        loaded = self._load()
        if loaded is None:
            return None
        meta, arrays = loaded
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            if hasattr(optimizer, "attach"):  # GammaISTA / NetworkSlimming: γ from this model
                optimizer.attach(model)
            optimizer.build(model.trainable_variables)
        current = _state_variables(model)
        if len(current) != len(arrays):
            raise ResumeError(
                f"Checkpoint {self.path!r} holds {len(arrays)} variables, the model and its "
                f"optimizer have {len(current)}: not the same model/optimizer configuration."
            )
        for (owner, variable), saved_path, value in zip(current, meta["paths"], arrays):
            if tuple(variable.shape) != value.shape:
                raise ResumeError(
                    f"Checkpoint variable {saved_path!r} has shape {value.shape}, the {owner}'s "
                    f"{variable.path!r} has {tuple(variable.shape)}: not the same model."
                )
        saved = meta.get("callbacks", [])
        names = [type(c).__name__ for c in self.stateful]
        if [c["class"] for c in saved] != names:
            raise ResumeError(
                f"Checkpoint {self.path!r} holds the state of the callbacks "
                f"{[c['class'] for c in saved]}, this run tracks {names}: pass the same "
                "stateful callbacks (e.g. CostTarget), in the same order, as the interrupted run."
            )
        for (_, variable), value in zip(current, arrays):
            variable.assign(value)
        for callback, entry in zip(self.stateful, saved):
            callback.set_state(entry["state"])
        return TrainingPosition(int(meta["epoch"]), int(meta["step"]))

    # ------------------------------------------------------------- writing
    def save(self, position: TrainingPosition) -> None:
        """Write the model's and optimizer's variables and ``position`` atomically."""
        strategy = getattr(self.model, "distribute_strategy", None)
        if strategy is not None and not getattr(strategy.extended, "should_checkpoint", True):
            return
        variables = _state_variables(self.model)
        meta = {
            "format": FORMAT,
            "epoch": position.epoch,
            "step": position.step,
            "paths": [f"{owner}:{v.path}" for owner, v in variables],
            "keras": keras.__version__,
            "callbacks": [{"class": type(c).__name__, "state": c.get_state()}
                          for c in self.stateful],
        }
        arrays = {f"v{i}": np.asarray(keras.ops.convert_to_numpy(v.value)) for i, (_, v) in enumerate(variables)}
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
        write_atomic(self.path, buffer.getvalue())
        self._since_save = 0

    # ------------------------------------------------------------ callbacks
    def on_train_begin(self, logs=None):
        if not self._started:
            self._started = True
            self._expected = self.restore(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        expected = self._expected
        if expected is not None:
            if epoch != expected.epoch:
                raise ResumeError(
                    f"The checkpoint was taken in epoch {expected.epoch} after {expected.step} "
                    f"batches, but training resumed at epoch {epoch}: pass "
                    f"initial_epoch={expected.epoch} and skip {expected.step} batches "
                    "(fit_resumable does both)."
                )
            self._offset = expected.step
            self._expected = None
        else:
            self._offset = 0
        self._epoch = epoch
        self._steps_in_epoch = self._offset

    def on_train_batch_end(self, batch, logs=None):
        done = self._offset + batch + 1  # batch is the last step of this execution
        self._since_save += done - self._steps_in_epoch
        self._steps_in_epoch = done
        if self._since_save >= self.save_freq:
            self.save(TrainingPosition(self._epoch, done))

    def on_epoch_end(self, epoch, logs=None):
        self.save(TrainingPosition(epoch + 1, 0))


def fit_resumable(
    model: keras.Model,
    epoch_data: Callable[[int], Any],
    epochs: int,
    checkpoint: StepCheckpoint,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    **fit_kwargs: Any,
) -> keras.callbacks.History:
    """``model.fit`` over ``epochs`` epochs that continues exactly where a crash left it.

    Args:
        model: a compiled model, built the same way as in the interrupted process.
        epoch_data: ``epoch -> tf.data.Dataset`` of batches; must give the same
            batches in the same order for the same epoch in every process.
        epochs: total number of epochs of the run.
        checkpoint: the :class:`StepCheckpoint` (its file is where the state lives).
        callbacks: further callbacks; they see one ``fit`` call per epoch. Those with
            ``get_state()`` / ``set_state()`` (:class:`~tf_gamma_prune.CostTarget`)
            have their state checkpointed too; a ``CostTarget`` without
            ``total_steps`` gets ``epochs × steps per epoch``.
        **fit_kwargs: passed to ``model.fit`` (``verbose``, ``validation_data``,
            ``steps_per_epoch`` ...; not ``epochs``/``initial_epoch``/``callbacks``).

    Returns:
        A ``History`` with the epochs run by this call (none when the checkpoint is
        already at ``epochs``: the model and optimizer are then restored from it).
    """
    import tensorflow as tf

    for key in ("x", "y", "epochs", "initial_epoch", "callbacks"):
        if key in fit_kwargs:
            raise TypeError(f"fit_resumable sets {key!r} itself.")
    checkpoint.track(callbacks)
    steps_per_epoch = fit_kwargs.pop("steps_per_epoch", None)
    _set_total_steps(callbacks, epoch_data, epochs, steps_per_epoch)
    position = checkpoint.position()
    if position.epoch >= epochs:  # finished before: nothing to train, the state is restored
        checkpoint.restore(model)
    fit_kwargs.setdefault("shuffle", False)  # the order is epoch_data's business
    history = keras.callbacks.History()
    history.set_model(model)
    history.on_train_begin()
    for epoch in range(position.epoch, epochs):
        data = epoch_data(epoch)
        skip = position.step if epoch == position.epoch else 0
        steps = steps_per_epoch
        if skip:
            if not isinstance(data, tf.data.Dataset):
                raise TypeError(
                    f"epoch_data({epoch}) must return a tf.data.Dataset to skip the {skip} batches "
                    f"already trained on; got {type(data).__name__}."
                )
            data = data.skip(skip)
            if steps is not None:
                steps -= skip
        result = model.fit(
            data, epochs=epoch + 1, initial_epoch=epoch, steps_per_epoch=steps,
            callbacks=[checkpoint, *callbacks], **fit_kwargs,
        )
        for key, values in result.history.items():
            history.history.setdefault(key, []).extend(values)
        history.epoch.extend(result.epoch)
    return history


def _set_total_steps(callbacks: Sequence[Any], epoch_data: Callable[[int], Any], epochs: int,
                     steps_per_epoch: int | None) -> None:
    """Tell a ``CostTarget`` without ``total_steps`` the length of the whole run
    (each ``fit`` call here covers one epoch only)."""
    from tf_gamma_prune.sparsify.cost_target import CostTarget

    waiting = [c for c in callbacks if isinstance(c, CostTarget) and c.total_steps is None]
    if not waiting:
        return
    steps = steps_per_epoch
    if steps is None:
        import tensorflow as tf

        data = epoch_data(0)
        cardinality = int(data.cardinality()) if isinstance(data, tf.data.Dataset) else -1
        if cardinality < 0:
            raise ArgumentError(
                "fit_resumable cannot tell how many steps an epoch has (the dataset's "
                "cardinality is unknown): pass steps_per_epoch=..., or "
                "CostTarget(total_steps=...).")
        steps = cardinality
    for callback in waiting:
        callback.total_steps = int(epochs) * int(steps)
