"""A run killed mid-epoch and resumed with StepCheckpoint ends where an uninterrupted run ends.

The reference is a plain ``model.fit`` over the same batches in one process, without
any checkpointing; the interrupted run SIGKILLs itself between two checkpoints (so
steps are lost and replayed) and a fresh process resumes it. Determinism
(``enable_op_determinism`` is process-global) is switched on inside the subprocesses.

The model has a Dropout layer (its seed generator state must round-trip), a
learning-rate schedule on ``iterations`` (the inner optimizer's step count must
round-trip) and a callback that raises ρ at step 6, before the last checkpoint (so
GammaISTA's ρ variable must round-trip: the resumed process never runs that step).

The same pattern with a CostTarget steering ρ (modes ``ct_*``): its JSON state (locks,
push-back estimates, history) travels in the checkpoint, so the resumed run ends with
the same weights, ρ and controller history.

This file doubles as the job script: ``python tests/test_resume.py MODE DIR [KILL_AT]``.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve()
EPOCHS, BATCH, N = 3, 16, 128
STEPS = N // BATCH  # 8 per epoch
SAVE_FREQ = 5
KILL_AT = 15  # global step: epoch 1, batch 7 of 8; checkpoints at steps 5, 8 (epoch end), 13


# ----------------------------------------------------------------------------
# the job (runs in subprocesses)
# ----------------------------------------------------------------------------


def _setup():
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(7)
    tf.config.experimental.enable_op_determinism()
    return keras, tf


def _epoch_data(tf, epoch, shuffle=True):
    """The batches of ``epoch``: a function of the epoch index alone."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 6, 6, 2)).astype("float32")
    y = (x.mean(axis=(1, 2)) @ rng.normal(size=(2, 3))).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y))
    return (data.shuffle(N, seed=100 + epoch) if shuffle else data).batch(BATCH)


def _compiled_model(keras, cost_target=False):
    from tf_gamma_prune import GammaISTA

    x = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    h = keras.layers.BatchNormalization(
        gamma_initializer=keras.initializers.RandomUniform(0.05, 1.0), name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Dropout(0.3, name="drop")(h)
    y = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(x, y)
    lr = keras.optimizers.schedules.ExponentialDecay(0.08, decay_steps=4, decay_rate=0.8)
    if cost_target:  # rho: CostTarget's
        model.compile(GammaISTA(keras.optimizers.SGD(lr, momentum=0.9), rho=1e-3, min_channels=1),
                      loss="mse")
    else:
        model.compile(GammaISTA(keras.optimizers.SGD(lr, momentum=0.9), rho=0.05), loss="mse")
    return model


def _ct_callbacks(keras, kill_at=None):
    from tf_gamma_prune import CostTarget

    crash = _callbacks(keras, kill_at)[1]
    return [CostTarget(macs=0.4, every=3, reach_at=0.5), crash]


def _callbacks(keras, kill_at=None):
    class RaiseRho(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 6:
                self.model.optimizer.rho = 0.6

    class Crash(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if kill_at is not None and int(self.model.optimizer.iterations) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, like a lost machine

    return [RaiseRho(), Crash()]


def _dump(model, path, cost_target=None):
    result = {v.path: v.numpy().tolist() for v in model.weights}
    if cost_target is not None:
        result["cost_target"] = cost_target.get_state()
    result["iterations"] = int(model.optimizer.iterations)
    result["rho"] = float(model.optimizer.rho)
    pathlib.Path(path).write_text(json.dumps(result))


def _job(mode: str, directory: str, kill_at: int | None) -> None:
    keras, tf = _setup()
    directory = pathlib.Path(directory)
    model = _compiled_model(keras)
    if mode == "reference":  # plain Keras: one fit, one iterator over all epochs' batches
        stream = _epoch_data(tf, 0)
        for epoch in range(1, EPOCHS):
            stream = stream.concatenate(_epoch_data(tf, epoch))
        model.fit(stream, epochs=EPOCHS, steps_per_epoch=STEPS, verbose=0, shuffle=False,
                  callbacks=_callbacks(keras))
    elif mode == "resumable":
        from tf_gamma_prune.sparsify.resume import StepCheckpoint, fit_resumable

        checkpoint = StepCheckpoint(directory / "run.ckpt.npz", save_freq=SAVE_FREQ)
        fit_resumable(model, lambda e: _epoch_data(tf, e), EPOCHS, checkpoint,
                      callbacks=_callbacks(keras, kill_at), verbose=0)
    elif mode == "ct_reference":  # plain fit, as in "reference"
        model = _compiled_model(keras, cost_target=True)
        stream = _epoch_data(tf, 0)
        for epoch in range(1, EPOCHS):
            stream = stream.concatenate(_epoch_data(tf, epoch))
        callbacks = _ct_callbacks(keras)
        model.fit(stream, epochs=EPOCHS, steps_per_epoch=STEPS, verbose=0, shuffle=False,
                  callbacks=callbacks)
        _dump(model, directory / f"{mode}.json", callbacks[0])
        return
    elif mode == "ct_resumable":
        from tf_gamma_prune.sparsify.resume import StepCheckpoint, fit_resumable

        model = _compiled_model(keras, cost_target=True)
        checkpoint = StepCheckpoint(directory / "run.ckpt.npz", save_freq=SAVE_FREQ)
        callbacks = _ct_callbacks(keras, kill_at)
        fit_resumable(model, lambda e: _epoch_data(tf, e), EPOCHS, checkpoint,
                      callbacks=callbacks, verbose=0)
        _dump(model, directory / f"{mode}.json", callbacks[0])
        return
    elif mode == "backup":  # Keras' BackupAndRestore with the same step frequency
        backup = keras.callbacks.BackupAndRestore(str(directory / "backup"), save_freq=SAVE_FREQ)
        stream = _epoch_data(tf, 0, shuffle=False)  # the same batches every epoch
        model.fit(stream, epochs=EPOCHS, verbose=0, shuffle=False,
                  callbacks=[backup, *_callbacks(keras, kill_at)])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    _dump(model, directory / f"{mode}.json")


# ----------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------


def _start(mode, directory, kill_at=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    args = [sys.executable, str(HERE), mode, str(directory)] + ([str(kill_at)] if kill_at else [])
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=300):
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"job timed out:\n{err[-3000:]}")
    return proc.returncode, err


def _load(path, with_state=False):
    data = json.loads(pathlib.Path(path).read_text())
    state = data.pop("cost_target", None)
    loaded = data.pop("iterations"), data.pop("rho"), {k: np.asarray(v) for k, v in data.items()}
    return (*loaded, state) if with_state else loaded


def _max_diff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reference")
    rc, err = _finish(_start("reference", directory))
    assert rc == 0, err[-3000:]
    return _load(directory / "reference.json")


def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path, reference_run):
    from tf_gamma_prune.sparsify.resume import StepCheckpoint, TrainingPosition

    rc, err = _finish(_start("resumable", tmp_path, kill_at=KILL_AT))
    assert rc == -signal.SIGKILL, f"the first run should have been killed at step {KILL_AT}:\n{err[-3000:]}"
    assert not (tmp_path / "resumable.json").exists()
    checkpoint = StepCheckpoint(tmp_path / "run.ckpt.npz", save_freq=SAVE_FREQ)
    assert checkpoint.position() == TrainingPosition(epoch=1, step=5)  # global step 13

    rc, err = _finish(_start("resumable", tmp_path))
    assert rc == 0, err[-3000:]
    iterations, rho, resumed = _load(tmp_path / "resumable.json")
    ref_iterations, ref_rho, reference = reference_run

    assert iterations == ref_iterations == EPOCHS * STEPS
    assert rho == ref_rho == pytest.approx(0.6)
    gamma = reference["bn/gamma"]
    assert 0 < np.sum(gamma == 0) < gamma.size, "the test needs a partial zero pattern"
    np.testing.assert_array_equal(resumed["bn/gamma"] == 0, gamma == 0)
    assert resumed.keys() == reference.keys()
    for key in reference:
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)  # bit-equal
    assert checkpoint.position() == TrainingPosition(epoch=EPOCHS, step=0)


def test_cost_target_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path):
    """GammaISTA + CostTarget: the interrupted and resumed run (fit_resumable) ends with the
    weights, ρ and controller history of one plain, uninterrupted fit."""
    from tf_gamma_prune.sparsify.resume import StepCheckpoint, TrainingPosition

    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference = _start("ct_reference", reference_dir)
    rc, err = _finish(_start("ct_resumable", tmp_path, kill_at=KILL_AT))
    assert rc == -signal.SIGKILL, f"the first run should have been killed at step {KILL_AT}:\n{err[-3000:]}"
    checkpoint = StepCheckpoint(tmp_path / "run.ckpt.npz", save_freq=SAVE_FREQ)
    assert checkpoint.position() == TrainingPosition(epoch=1, step=5)  # global step 13
    rc, err = _finish(_start("ct_resumable", tmp_path))
    assert rc == 0, err[-3000:]
    rc, err = _finish(reference)
    assert rc == 0, err[-3000:]

    iterations, rho, resumed, state = _load(tmp_path / "ct_resumable.json", with_state=True)
    ref_iterations, ref_rho, expected, ref_state = _load(
        reference_dir / "ct_reference.json", with_state=True)
    assert iterations == ref_iterations == EPOCHS * STEPS
    assert rho == ref_rho
    assert state == ref_state  # locks, push-back estimates, history: all of it
    history = ref_state["history"]
    assert [h["step"] for h in history] == list(range(0, EPOCHS * STEPS + 1, 3))
    assert max(h["rho"] for h in history) > 1e-3, "the controller should have acted"
    gamma = expected["bn/gamma"]
    assert 0 < np.sum(gamma == 0) < gamma.size, "the test needs a partial zero pattern"
    assert resumed.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)  # bit-equal


def test_checkpoint_refuses_other_stateful_callbacks(tmp_path):
    import keras

    from tf_gamma_prune import CostTarget
    from tf_gamma_prune.sparsify.resume import ResumeError, StepCheckpoint, TrainingPosition

    model = _compiled_model(keras, cost_target=True)
    model.optimizer.attach(model).build(model.trainable_variables)
    target = CostTarget(macs=0.5, total_steps=10)
    checkpoint = StepCheckpoint(tmp_path / "a.npz", callbacks=[target, object()])
    assert checkpoint.stateful == [target]
    checkpoint.set_model(model)
    checkpoint.save(TrainingPosition(0, 3))
    with pytest.raises(ResumeError, match="state of the callbacks.*CostTarget"):
        StepCheckpoint(tmp_path / "a.npz").restore(model)
    again = CostTarget(macs=0.5)
    assert StepCheckpoint(tmp_path / "a.npz", callbacks=[again]).restore(model) == \
        TrainingPosition(0, 3)
    assert again.get_state() == target.get_state() and again.total_steps == 10


@pytest.mark.slow
def test_backup_and_restore_replays_the_interrupted_epoch(tmp_path, reference_run):
    """Why resume.py exists: Keras' BackupAndRestore(save_freq=N) after the same crash.

    Its last backup before the kill at step 15 is at step 15 itself (every 5 batches:
    steps 5, 10, 15; epoch 1, batch 6). It restores weights and optimizer state from
    there but restarts epoch 1 at its first batch, so batches 0-6 of epoch 1 are
    trained on twice: 7 steps more than the uninterrupted run, other weights. (Both
    runs here see the same unshuffled batches every epoch.)
    """
    directory = tmp_path / "interrupted"
    directory.mkdir()
    jobs = [_start("backup", directory, kill_at=KILL_AT), _start("backup", tmp_path)]
    (rc_killed, err), (rc_plain, err_plain) = _finish(jobs[0]), _finish(jobs[1])
    assert rc_killed == -signal.SIGKILL, err[-3000:]
    assert rc_plain == 0, err_plain[-3000:]
    rc, err = _finish(_start("backup", directory))
    assert rc == 0, err[-3000:]
    iterations, _, resumed = _load(directory / "backup.json")
    plain_iterations, _, plain = _load(tmp_path / "backup.json")
    assert plain_iterations == EPOCHS * STEPS
    assert iterations == plain_iterations + 7  # epoch 1 restarted from batch 0 after step 15
    assert _max_diff(resumed, plain) > 1e-4


def test_checkpoint_round_trips_gamma_ista_state_in_process(tmp_path):
    """Every model and optimizer variable (ρ, iterations, momentum, seed state) comes back."""
    import keras
    import tensorflow as tf

    from tf_gamma_prune.sparsify.resume import StepCheckpoint, TrainingPosition

    def fitted(rho, steps):
        keras.utils.set_random_seed(1)
        model = _compiled_model(keras)
        model.optimizer.rho = rho
        model.fit(_epoch_data(tf, 0).take(steps), epochs=1, verbose=0, shuffle=False)
        return model

    trained = fitted(0.3, steps=3)
    checkpoint = StepCheckpoint(tmp_path / "state.npz", save_freq=1)
    checkpoint.set_model(trained)
    checkpoint.save(TrainingPosition(4, 5))

    fresh = fitted(0.01, steps=1)  # other values everywhere, same structure
    assert checkpoint.restore(fresh) == TrainingPosition(4, 5)
    assert float(fresh.optimizer.rho) == pytest.approx(0.3)
    assert int(fresh.optimizer.iterations) == 3
    pairs = list(zip(trained.variables + trained.optimizer.variables,
                     fresh.variables + fresh.optimizer.variables))
    assert any("momentum" in a.path for a, _ in pairs)
    assert any("seed_generator" in a.path for a, _ in pairs)
    for a, b in pairs:
        np.testing.assert_array_equal(np.asarray(b.numpy()), np.asarray(a.numpy()), err_msg=a.path)


def test_a_finished_run_is_restored_not_retrained(tmp_path):
    """fit_resumable on a checkpoint that is already at the end trains nothing and
    leaves the model (a fresh process's freshly built one) with the saved state."""
    import keras
    import tensorflow as tf

    from tf_gamma_prune.sparsify.resume import StepCheckpoint, fit_resumable

    keras.utils.set_random_seed(1)
    trained = _compiled_model(keras)
    path = tmp_path / "run.npz"
    fit_resumable(trained, lambda e: _epoch_data(tf, e), 2, StepCheckpoint(path, 3), verbose=0)
    keras.utils.set_random_seed(2)
    fresh = _compiled_model(keras)  # a new process: other initial weights
    history = fit_resumable(fresh, lambda e: _epoch_data(tf, e), 2, StepCheckpoint(path, 3),
                            verbose=0)
    assert history.epoch == []
    assert int(fresh.optimizer.iterations) == int(trained.optimizer.iterations)
    for a, b in zip(trained.variables, fresh.variables):
        np.testing.assert_array_equal(np.asarray(b.numpy()), np.asarray(a.numpy()), err_msg=a.path)


def test_checkpoint_of_another_model_or_corrupt_file_is_refused(tmp_path):
    import keras

    from tf_gamma_prune.sparsify.resume import ResumeError, StepCheckpoint, TrainingPosition

    model = _compiled_model(keras)
    model.optimizer.attach(model).build(model.trainable_variables)
    checkpoint = StepCheckpoint(tmp_path / "a.npz")
    assert checkpoint.position() == TrainingPosition(0, 0) and checkpoint.restore(model) is None
    checkpoint.set_model(model)
    checkpoint.save(TrainingPosition(1, 0))

    other = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3),
                              keras.layers.BatchNormalization(), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3)])
    other.compile(model.optimizer.__class__.from_config(model.optimizer.get_config()), loss="mse")
    other.optimizer.attach(other)
    with pytest.raises(ResumeError, match="not the same model"):
        checkpoint.restore(other)

    data = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "a.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ResumeError, match="Cannot read training checkpoint.*Delete it"):
        checkpoint.position()


def test_resuming_at_the_wrong_epoch_is_refused(tmp_path):
    import keras
    import tensorflow as tf

    from tf_gamma_prune.sparsify.resume import ResumeError, StepCheckpoint, TrainingPosition

    model = _compiled_model(keras)
    model.optimizer.attach(model).build(model.trainable_variables)
    checkpoint = StepCheckpoint(tmp_path / "a.npz")
    checkpoint.set_model(model)
    checkpoint.save(TrainingPosition(1, 3))
    with pytest.raises(ResumeError, match="initial_epoch=1 and skip 3 batches"):
        model.fit(_epoch_data(tf, 0), epochs=1, verbose=0, shuffle=False,
                  callbacks=[StepCheckpoint(tmp_path / "a.npz")])


def test_module_docstring_example_runs():
    import doctest

    import tf_gamma_prune.sparsify.resume

    result = doctest.testmod(tf_gamma_prune.sparsify.resume, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


if __name__ == "__main__":
    _job(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
