"""GammaISTA under tf.distribute matches a single-worker run on the same global batches.

* ``MultiWorkerMirroredStrategy``: two worker processes on 127.0.0.1 (TF_CONFIG with
  free ports picked at run time) against one plain process, custom training loop.
  Keras 3's ``model.fit`` cannot run under MWMS (keras-team/keras#20585, see
  ``test_keras_fit_under_multi_worker_strategy_is_broken_upstream``), so the
  distributed path is driven the way MWMS users drive it: ``strategy.run`` with
  ``optimizer.apply``.
* ``MirroredStrategy`` with two logical CPUs through ``model.fit``: the epoch losses
  and every weight, not only γ (``tests/test_optimizer.py`` already checks γ).

BatchNormalization is ``synchronized=True`` so its batch statistics are global; with
per-replica statistics the runs legitimately differ (by ~1e-2 here).

This file doubles as the job script: ``python tests/test_distributed.py MODE OUT.json``.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve()
GLOBAL_BATCH = 32
EPOCHS = 6
RHO = 0.3


# ----------------------------------------------------------------------------
# the job (runs in subprocesses)
# ----------------------------------------------------------------------------


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8, 8, 3)).astype("float32")
    y = (x.mean(axis=(1, 2))[:, :2] * 3.0).astype("float32")
    return x, y


def _model(keras):
    keras.utils.set_random_seed(3)
    init = keras.initializers.RandomUniform(0.1, 1.5)  # spread γ: a partial zero pattern
    x = keras.Input((8, 8, 3))
    h = x
    for i in range(2):
        h = keras.layers.Conv2D(8, 3, padding="same", name=f"conv{i}")(h)
        h = keras.layers.BatchNormalization(synchronized=True, gamma_initializer=init, name=f"bn{i}")(h)
        h = keras.layers.ReLU()(h)
    y = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(x, y)


def _optimizer(keras):
    from tf_gamma_prune import GammaISTA

    return GammaISTA(keras.optimizers.SGD(0.05, momentum=0.9), rho=RHO)


def _global_batches(tf):
    """The same global batches for every run; DATA sharding splits each one across workers."""
    x, y = _data()
    options = tf.data.Options()
    # With a dataset batched to the *global* batch size, DATA auto-sharding hands
    # worker i the i-th slice of every global batch (worker 0 rows 0-15, worker 1
    # rows 16-31 here), so the workers together see exactly the single-worker batches.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).with_options(options)


def _custom_loop(strategy, tf, keras):
    """strategy.run + optimizer.apply, loss averaged over the global batch."""
    dataset = _global_batches(tf)
    with strategy.scope():
        model = _model(keras)
        optimizer = _optimizer(keras).attach(model)
        optimizer.build(model.trainable_variables)
    batches = strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def train_step(batch):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                per_example = tf.reduce_mean(tf.square(model(x, training=True) - y), axis=-1)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            return loss

        return strategy.reduce("SUM", strategy.run(replica_step, args=batch), axis=None)

    losses = [float(train_step(batch)) for _ in range(EPOCHS) for batch in batches]
    return model, losses


def _fit(strategy, tf, keras):
    with strategy.scope():
        model = _model(keras)
        model.compile(_optimizer(keras), loss="mse")
    history = model.fit(_global_batches(tf), epochs=EPOCHS, verbose=0)
    return model, history.history["loss"]


def _result(strategy, model, losses) -> dict:
    return {
        "replicas": strategy.num_replicas_in_sync,
        "loss": [float(v) for v in losses],
        "weights": {v.path: v.numpy().tolist() for v in model.weights},
    }


def _job(mode: str, out: str) -> None:
    """``mwms-loop``/``mwms-fit``: one MWMS worker (TF_CONFIG from the environment);
    ``fit-pair``: model.fit on one device, then under MirroredStrategy on two logical CPUs."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf

    if mode == "fit-pair":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    if mode.startswith("mwms"):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        run = _fit if mode == "mwms-fit" else _custom_loop
        result = _result(strategy, *run(strategy, tf, keras))
    elif mode == "fit-pair":
        result = {}
        for name, strategy in (("single", tf.distribute.get_strategy()),
                               ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
            result[name] = _result(strategy, *_fit(strategy, tf, keras))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    with open(out, "w") as f:
        json.dump(result, f)


def single_worker_reference() -> dict:
    """The custom loop without any strategy, in this process."""
    import keras
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    return _result(strategy, *_custom_loop(strategy, tf, keras))


# ----------------------------------------------------------------------------
# launching
# ----------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3", **extra)
    return env


def _run_group(jobs: list[tuple[str, str, dict]], timeout: float, meanwhile=None):
    """Start every (mode, out, env) job and wait for all, killing the rest when one fails.

    Returns ``([(exit code, stderr), ...], meanwhile())``; ``meanwhile`` runs in this
    process after the jobs have started. Every started process is gone on return.
    """
    procs, value = [], None
    try:
        for mode, out, env in jobs:
            procs.append(subprocess.Popen(
                [sys.executable, str(HERE), mode, out], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            ))
        deadline = time.monotonic() + timeout
        if meanwhile is not None:
            value = meanwhile()
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break  # a dead worker leaves its peer waiting on collectives forever
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        results = []
        for p in procs:
            try:
                _, err = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover
                err = ""
            results.append((p.returncode, err or ""))
    return results, value


def run_multi_worker(mode: str, tmp_path: pathlib.Path, meanwhile=None,
                     timeout: float = 240, attempts: int = 2) -> tuple[list[dict], object]:
    """Run ``mode`` on two MWMS workers on localhost; ``meanwhile()`` runs here while they do."""
    for attempt in range(attempts):
        ports = _free_ports(2)
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        jobs = []
        for index in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            jobs.append((mode, str(tmp_path / f"{mode}-{attempt}-w{index}.json"), _env(TF_CONFIG=tf_config)))
        results = _run_group(jobs, timeout, meanwhile)
        if all(rc == 0 for rc, _ in results[0]):
            return [json.loads(pathlib.Path(out).read_text()) for _, out, _ in jobs], results[1]
        text = "\n".join(err[-3000:] for _, err in results[0])
        port_trouble = "address already in use" in text.lower() or "UNAVAILABLE" in text
        if not port_trouble or attempt == attempts - 1:
            raise AssertionError(
                f"multi-worker run failed (exit codes {[rc for rc, _ in results[0]]}):\n{text}")
        meanwhile = None if meanwhile is None else (lambda value=results[1]: value)
    raise AssertionError("unreachable")  # pragma: no cover


def assert_same_training(reference: dict, other: dict, rtol: float = 1e-4, atol: float = 1e-5):
    """Same zero pattern of every γ, same losses and weights within float32 reduction noise."""
    np.testing.assert_allclose(other["loss"], reference["loss"], rtol=rtol, atol=atol)
    assert reference["weights"].keys() == other["weights"].keys()
    zeros = 0
    for path, ref in reference["weights"].items():
        ref, got = np.asarray(ref), np.asarray(other["weights"][path])
        if path.endswith("gamma"):
            np.testing.assert_array_equal(got == 0, ref == 0, err_msg=f"zero pattern of {path}")
            zeros += int(np.sum(ref == 0))
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol, err_msg=path)
    total = sum(np.asarray(w).size for p, w in reference["weights"].items() if p.endswith("gamma"))
    assert 0 < zeros < total, f"the test needs a partial zero pattern, got {zeros}/{total} zeros"


# ----------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------


def test_multi_worker_two_processes_match_single_worker(tmp_path):
    workers, single = run_multi_worker("mwms-loop", tmp_path, meanwhile=single_worker_reference)
    assert [w["replicas"] for w in workers] == [2, 2] and single["replicas"] == 1
    # The workers hold mirrored copies: bit-identical to each other.
    assert workers[0]["weights"] == workers[1]["weights"]
    assert workers[0]["loss"] == workers[1]["loss"]
    assert_same_training(single, workers[0])


def test_mirrored_strategy_fit_losses_and_weights_match_single_device(tmp_path):
    out = tmp_path / "fit-pair.json"
    [(rc, err)], _ = _run_group([("fit-pair", str(out), _env())], timeout=240)
    assert rc == 0, err[-3000:]
    result = json.loads(out.read_text())
    assert result["single"]["replicas"] == 1 and result["mirrored"]["replicas"] == 2
    assert_same_training(result["single"], result["mirrored"])


@pytest.mark.slow
def test_keras_fit_under_multi_worker_strategy_is_broken_upstream(tmp_path):
    """Documents keras-team/keras#20585; fails once Keras fixes it, so the docs get updated."""
    try:
        run_multi_worker("mwms-fit", tmp_path, attempts=1)
    except AssertionError as e:
        if "PerReplica" in str(e):
            pytest.xfail("keras-team/keras#20585: fit() reduces the nested (x, y) PerReplica batch "
                         "with strategy.reduce, which MultiWorkerMirroredStrategy cannot do")
        raise
    pytest.fail("model.fit works under MultiWorkerMirroredStrategy now: update docs/distributed.md "
                "and test the fit path too")


if __name__ == "__main__":
    _job(sys.argv[1], sys.argv[2])
