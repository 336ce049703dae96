"""The examples' main functions, with tiny settings on real data."""

import glob
import contextlib
import os
import sys

import numpy as np
import pytest

from test_data import needs_fashion_mnist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))


@needs_fashion_mnist
def test_fashion_mnist_pipeline_tiny(tmp_path):
    import example_plots
    import fashion_mnist

    from tf_gamma_prune.data import load_fashion_mnist

    (x, y), (x_test, y_test) = load_fashion_mnist()
    rows, report, paths = fashion_mnist.run_pipeline(
        x[:1024], y[:1024], x_test[:256], y_test[:256], epochs=2, finetune_epochs=1,
        batch_size=64, learning_rate=0.05, rho=1.0, rho_warmup=1.0, penalties="paper",
        out_dir=str(tmp_path), latency_runs=3, seed=0, verbose=0, tflite_eval_examples=64,
        run_name="tiny")
    logs = paths.pop("logs")
    for path in paths.values():
        assert os.path.getsize(path) > 0, path
    # Plots: valid PNGs beside the models.
    pngs = [p for p in paths.values() if p.endswith(".png")]
    assert sorted(os.path.basename(p) for p in pngs) == [
        "accuracy_vs_macs.png", "channel_widths.png", "gamma_per_layer.png"]
    assert all(os.path.dirname(p) == str(tmp_path) and example_plots.is_png(p) for p in pngs)
    # TensorBoard: Keras' own logs and SparsityMonitor's γ histograms in this run's folder.
    assert logs == os.path.join(str(tmp_path), "logs", "tiny")
    for sub in ("train", "validation", "gamma"):
        assert glob.glob(os.path.join(logs, sub, "events.out.tfevents.*")), sub

    by_stage = {r.stage.strip(): r for r in rows}
    sparse, pruned = by_stage["sparsified (GammaISTA)"], by_stage["pruned (exact, no tuning)"]
    assert pruned.params < sparse.params and pruned.macs < sparse.macs
    # Exact pruning: the pruned model classifies the test images like the sparse one.
    assert pruned.accuracy == pytest.approx(sparse.accuracy, abs=1 / 256)
    assert report.max_rel_deviation < 1e-4
    table = fashion_mnist.format_table(rows)
    assert "pruned + fine-tuned" in table and ".tflite int8" in table
    assert all(np.isfinite(r.accuracy) for r in rows)


@needs_fashion_mnist
def test_fashion_mnist_default_flow_tiny(tmp_path, capsys):
    """The demo's default: the committed reference, GammaISTA + CostTarget, prune, tune, TFLite."""
    import example_plots
    import fashion_mnist

    from tf_gamma_prune.data import load_fashion_mnist, validation_split

    (x, y), (x_test, y_test) = load_fashion_mnist()
    (x, y), _ = validation_split(x, y, 5000, seed=0)
    reference = fashion_mnist.load_keras_model(os.path.join(SAVED, "fashion_vgg_reference.keras"))
    weights = [w.copy() for w in reference.get_weights()]
    x_test, y_test = x_test[:256], y_test[:256]
    result = fashion_mnist.prune_reference(
        reference, x[:512], y[:512], x_test, y_test, target_macs=0.5, epochs=1, finetune_epochs=1,
        batch_size=64, out_dir=str(tmp_path), latency_runs=3, cost_target_every=2, verbose=0,
        tflite_eval_examples=64, run_name="tiny")
    # the reference itself is left as it was
    assert all(np.array_equal(a, b) for a, b in zip(weights, reference.get_weights()))

    rows = {r.stage: r for r in result.rows}
    assert list(rows) == ["reference", "reference, int8", "pruned (exact, no tuning)",
                          "pruned + fine-tuned", "pruned + fine-tuned, int8"]
    ref, tuned = rows["reference"], rows["pruned + fine-tuned"]
    # smaller: CostTarget took it to about the budget (half the MACs)
    assert tuned.params < ref.params and tuned.macs < 0.6 * ref.macs
    assert tuned.mac_reduction == pytest.approx(ref.macs / tuned.macs)
    assert os.path.getsize(result.paths["pruned.tflite"]) < os.path.getsize(
        result.paths["reference.tflite"])
    assert os.path.getsize(result.paths["pruned_int8.tflite"]) < os.path.getsize(
        result.paths["pruned.tflite"])
    assert result.tuned.count_params() == tuned.params < result.sparse.count_params()
    # exact before fine-tuning: the pruned model computes what the unpruned (sparse) one did
    before = result.sparse.predict(x_test, verbose=0)
    after = result.pruned.predict(x_test, verbose=0)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-4 * np.abs(before).max())
    assert result.report.max_rel_deviation < 1e-4 and result.changed_predictions == 0
    assert rows["pruned (exact, no tuning)"].accuracy == pytest.approx(
        np.mean(np.argmax(before, -1) == y_test))
    assert result.controller.history and result.int8_examples == 64
    for name, path in result.paths.items():
        assert os.path.exists(path), name
    assert example_plots.is_png(result.paths["channel_widths.png"])

    fashion_mnist.print_reference_result(result, len(x_test))
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("stage"))
    for column in ("test acc", "params", "MACs", ".tflite KB", "latency ms", "fewer MACs",
                   "speed-up"):
        assert column in lines[header], column
    for i, stage in enumerate(rows):
        assert lines[header + 2 + i].startswith(stage), (stage, lines[header + 2 + i])
    assert "max relative output deviation" in printed and "0 of 256 test predictions" in printed
    seconds = lines[-1]
    assert seconds.startswith("seconds: reference accuracy "), seconds
    for stage in ("GammaISTA (1 ep)", "prune + check", "fine-tune (1 ep)", "TFLite export",
                  "int8 accuracy + latency", "plots", "| total "):
        assert stage in seconds, stage


def tiny_default_flow(tmp_path, **kwargs):
    """``prune_reference`` on the committed reference, 512 training and 128 test images, half the
    MACs, 1 GammaISTA epoch, no fine-tuning (``kwargs`` add to / override these)."""
    import fashion_mnist

    from tf_gamma_prune.data import load_fashion_mnist

    (x, y), (x_test, y_test) = load_fashion_mnist(train_examples=512, test_examples=128)
    reference = fashion_mnist.load_keras_model(os.path.join(SAVED, "fashion_vgg_reference.keras"))
    options = dict(target_macs=0.5, epochs=1, finetune_epochs=0, batch_size=64,
                   out_dir=str(tmp_path), latency_runs=3, cost_target_every=2, verbose=0)
    return fashion_mnist.prune_reference(reference, x, y, x_test, y_test, **{**options, **kwargs})


@pytest.mark.slow
def test_fashion_mnist_default_flow_reports_qat_next_to_ptq(tmp_path):
    """--qat_epochs: an int8 row from quantization-aware training (tfmot, isolated process)."""
    from tf_gamma_prune.qat import isolate

    if isolate.missing_dependencies():  # checked without importing tfmot here
        pytest.skip('needs the tfmot extra: pip install "tf-gamma-prune[tfmot]"')
    result = tiny_default_flow(tmp_path, tflite_eval_examples=128, run_name="qat", qat_epochs=1)
    rows = {r.stage: r for r in result.rows}
    qat, ptq = rows["pruned + tuned, int8 QAT"], rows["pruned + fine-tuned, int8"]
    assert 0.0 <= qat.accuracy <= 1.0 and qat.latency_ms > 0 and qat.macs == ptq.macs
    assert os.path.exists(os.path.join(os.path.dirname(result.paths["pruned_int8.tflite"]),
                                       "pruned_int8_qat.tflite"))
    # the QAT file is int8 like PTQ's: about the same size, far below float32's
    assert qat.tflite_kb < 0.5 * rows["pruned + fine-tuned"].tflite_kb


def test_fashion_mnist_default_flow_aligns_widths_with_round_to(tmp_path):
    """--round_to: CostTarget aligns the widths, the pruned model's convs are multiples of it."""
    import keras

    result = tiny_default_flow(tmp_path, tflite_eval_examples=32, run_name="aligned", round_to=8)
    pruned = keras.models.load_model(result.paths["pruned.keras"], compile=False)
    widths = [layer.filters for layer in pruned.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(w % 8 == 0 for w in widths) and sum(widths) < 448, widths
    rows = {r.stage: r for r in result.rows}
    assert rows["pruned + fine-tuned"].macs <= 0.5 * rows["reference"].macs * 1.05


def test_fine_tune_distils_from_a_teacher_it_leaves_unchanged():
    """--distill_weight: the same seed and data with and without the teacher give different
    students (the KL term acts), and the teacher's weights and trainability stay as they were."""
    import fashion_mnist
    import keras
    import numpy as np

    from tf_gamma_prune.reference_models import fashion_vgg

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 28, 28, 1)).astype("float32"), rng.integers(0, 10, 64)
    keras.utils.set_random_seed(0)
    teacher, student = fashion_vgg(widths=(4, 4, 8, 8, 8, 8)), fashion_vgg(widths=(2, 2, 4, 4, 4, 4))
    before = [np.array(w) for w in teacher.weights]
    tuned = {}
    for weight in (0.0, 1.0):
        copy = fashion_mnist.copy_model(student)
        keras.utils.set_random_seed(0)
        fashion_mnist.fine_tune(copy, x, y, epochs=1, batch_size=32, learning_rate=0.05, seed=0,
                                verbose=0, teacher=teacher, distill_weight=weight)
        tuned[weight] = np.concatenate([np.ravel(w) for w in copy.get_weights()])
    start = np.concatenate([np.ravel(w) for w in student.get_weights()])
    assert not np.allclose(tuned[0.0], start)  # it trained
    assert not np.allclose(tuned[1.0], tuned[0.0])  # the teacher changed the updates
    assert teacher.trainable and all(np.array_equal(a, np.array(b)) for a, b in zip(before, teacher.weights))


def test_fashion_mnist_flags_pick_each_flows_defaults():
    import fashion_mnist

    assert fashion_mnist.flow_settings(False) == fashion_mnist.PRETRAINED_DEFAULTS
    assert fashion_mnist.flow_settings(True)["train_examples"] == 15000
    assert fashion_mnist.flow_settings(True, full=True)["train_examples"] is None
    assert fashion_mnist.flow_settings(False, epochs=3, learning_rate=None) == {
        **fashion_mnist.PRETRAINED_DEFAULTS, "epochs": 3}
    from absl import app

    with example_flags(fashion_mnist, ["fashion_mnist", "--full"]):
        with pytest.raises(app.UsageError, match="from_scratch"):
            fashion_mnist.main([])


def test_cifar10_resnet20_protocol_on_mock_data(tmp_path):
    import cifar10_resnet20 as c10
    import example_plots
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=200):
        (x, y), (x_test, y_test) = c10.load_cifar10()
    assert x.shape == (200, 32, 32, 3) and x.dtype == np.float32
    settings = c10.ProtocolSettings(epochs=2, warmup_epochs=1, finetune_epochs=1, batch_size=50,
                                    rho_warmup=0.5, rho=2.0, verbose=0)
    result = c10.run_protocol(x, y, x_test, y_test, settings, str(tmp_path), run_name="tiny")

    # Only the first conv of each block was sparsified; every other γ is untouched by ISTA.
    first = set(c10.pruned_bn_names(result.sparse))
    zeros = {layer.name: int(np.sum(np.asarray(layer.gamma) == 0))
             for layer in result.sparse.layers if hasattr(layer, "gamma")}
    assert sum(zeros[n] for n in first) > 0
    assert all(zeros[n] == 0 for n in zeros if n not in first)
    # Smaller (or equal) and the same function before fine-tuning.
    assert result.pruned.count_params() <= result.sparse.count_params()
    assert result.rows[1].params < result.rows[0].params
    before = result.sparse.predict(x_test, verbose=0)
    after = result.pruned.predict(x_test, verbose=0)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-4 * np.abs(before).max())
    assert result.report.max_rel_deviation < 1e-4
    # Only first convs lost channels: block outputs keep their widths.
    for name, (old, new) in result.report.widths.items():
        if new != old:
            assert name.endswith(("_conv1", "_bn1")), name
    for name, path in result.paths.items():
        assert os.path.exists(path), name
    assert example_plots.is_png(result.paths["channel_widths.png"])
    import fashion_mnist

    assert "pruned + fine-tuned" in fashion_mnist.format_table(result.rows)


REPO = os.path.join(os.path.dirname(__file__), "..")
SAVED = os.path.join(REPO, "saved_models")


@contextlib.contextmanager
def example_flags(module, argv):
    """Define an example's absl flags, parse ``argv``, and unregister them afterwards.

    The examples define their flags only when run as scripts; leaving them on the
    global FLAGS would clash with other modules' flags (e.g. the CLI's batch_size)
    later in the same pytest process.
    """
    from absl import flags

    before = set(flags.FLAGS)
    module.define_flags()
    try:
        flags.FLAGS(argv)
        yield flags.FLAGS
    finally:
        flags.FLAGS.unparse_flags()
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)


@needs_fashion_mnist
def test_pretrained_main_tiny(tmp_path, capsys):
    import pretrained

    argv = ["pretrained", f"--model={os.path.join(SAVED, 'fashion_vgg_baseline.keras')}",
            "--train_examples=512", "--epochs=1", "--finetune_epochs=1", "--batch_size=64",
            "--learning_rate=0.001", "--rho=8", f"--out_dir={tmp_path}"]
    with example_flags(pretrained, argv):
        pretrained.main([])
    printed = capsys.readouterr().out
    assert "pruned + fine-tuned" in printed and "rescale back on the pruned model" in printed
    assert os.path.getsize(tmp_path / "pruned.keras") > 0
    assert os.path.getsize(tmp_path / "pruned.tflite") > 0


@needs_fashion_mnist
def test_pretrained_flow_is_exact_at_every_step():
    import pretrained

    from tf_gamma_prune.data import load_fashion_mnist

    (x, y), (x_test, y_test) = load_fashion_mnist()
    model = pretrained.load_trained_model(os.path.join(SAVED, "fashion_vgg_baseline.keras"))
    result = pretrained.prune_pretrained(
        model, x[:512], y[:512], x_test[:256], y_test[:256], alpha=0.1, epochs=1, finetune_epochs=0,
        batch_size=64, learning_rate=1e-3, finetune_learning_rate=0.01, rho=8.0, seed=0, verbose=0)
    assert result.rescale_deviation < 1e-5
    assert result.rescale_back_deviation < 1e-5  # rescale_gamma(pruned, 1/α)
    assert result.prune_deviation < 1e-4
    # the default fold: carriers or kept constants, never a border map, never larger
    assert not any(type(layer).__name__ == "BorderCorrection" for layer in result.pruned.layers)
    ista, pruned = result.rows[1], result.rows[2]
    assert pruned.macs < ista.macs
    assert result.report.params_after < result.report.params_before
    assert pruned.accuracy == pytest.approx(ista.accuracy, abs=1 / 256)


def test_make_saved_models_tiny(tmp_path):
    import make_saved_models

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (256, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 256).astype(np.uint8)
    paths = make_saved_models.make_saved_models(
        x, y, x[:64], y[:64], str(tmp_path), epochs=1, ista_epochs=1, finetune_epochs=0,
        alpha=0.1, rho=3.0, verbose=0)
    assert sorted(os.path.basename(p) for p in paths.values()) == [
        "fashion_vgg_baseline.keras", "fashion_vgg_baseline.tflite",
        "fashion_vgg_pruned.keras", "fashion_vgg_pruned.tflite"]
    assert all(0 < os.path.getsize(p) < make_saved_models.MAX_BYTES for p in paths.values())


@pytest.mark.parametrize("name", ["fashion_vgg_baseline", "fashion_vgg_pruned"])
def test_committed_saved_models_load_and_match_their_tflite(name):
    import keras

    import tf_gamma_prune  # noqa: F401  registers the custom layers
    from tf_gamma_prune.export import assert_builtin_only, check_parity

    keras_path = os.path.join(SAVED, f"{name}.keras")
    tflite_path = os.path.join(SAVED, f"{name}.tflite")
    for path in (keras_path, tflite_path):
        assert os.path.getsize(path) < 2 * 1024 * 1024, path
    model = keras.models.load_model(keras_path)  # safe mode: no Python code inside
    assert model.output_shape == (None, 10)
    assert_builtin_only(tflite_path)
    inputs = np.random.default_rng(0).uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
    check_parity(model, tflite_path, inputs).assert_within(1e-4)


@needs_fashion_mnist
def test_reference_training_records_and_resumes(tmp_path):
    """examples/reference_training.py: hold-out split, files, record; a rerun trains nothing."""
    import json

    import keras
    import reference_training

    from tf_gamma_prune.data import load_fashion_mnist

    (x, y), (x_test, y_test) = load_fashion_mnist()
    x, y, x_test, y_test = x[:5600], y[:5600], x_test[:200], y_test[:200]
    work = tmp_path / "work"
    record = reference_training.train_reference(x, y, x_test, y_test, out_dir=str(tmp_path),
                                                work_dir=str(work), epochs=1, verbose=0)
    assert record["train_examples"] == 600  # 5,000 held out for validation
    assert [h["epoch"] for h in record["history"]] == [0]
    assert record["tflite_parity_max_rel"] <= 1e-4
    saved = json.loads((tmp_path / "fashion_vgg_reference.json").read_text())
    assert saved["test_accuracy"] == record["test_accuracy"]
    model = keras.models.load_model(tmp_path / "fashion_vgg_reference.keras", compile=False)
    predicted = np.argmax(model.predict(x_test, verbose=0), -1)
    assert np.mean(predicted == y_test) == pytest.approx(record["test_accuracy"])
    again = reference_training.train_reference(x, y, x_test, y_test, out_dir=str(tmp_path),
                                               work_dir=str(work), epochs=1, verbose=0)
    assert again["history"] == record["history"]  # resumed at the end: nothing retrained
    assert again["test_accuracy"] == record["test_accuracy"]


def test_fashion_mnist_default_flow_with_l1_norm_in_tiles(tmp_path, capsys):
    """``method="l1_norm"``: the reference's L1-norm filters cut at the budget, widths in tiles."""
    import fashion_mnist

    from tf_gamma_prune import count_macs

    result = tiny_default_flow(tmp_path, method="l1_norm", round_to=16, target_macs=1 / 3,
                               finetune_epochs=1, qat_epochs=0)
    rows = {r.stage: r for r in result.rows}
    assert "pruned (cut, no tuning)" in rows and result.controller is None
    widths = [int(result.tuned.get_layer(f"conv{i}").kernel.shape[-1]) for i in range(1, 7)]
    assert all(w % 16 == 0 for w in widths), widths
    reference_macs = rows["reference"].macs
    assert abs(count_macs(result.tuned) - reference_macs / 3) <= 0.05 * reference_macs / 3
    # the cut keeps each layer's largest-L1-norm filters of the reference (numpy, independently)
    kept = result.pruned.get_layer("conv1").kernel.numpy()
    full = result.sparse.get_layer("conv1").kernel.numpy()
    norms = np.abs(full).sum(axis=(0, 1, 2))
    top = np.sort(np.argsort(-norms, kind="stable")[:kept.shape[-1]])
    np.testing.assert_array_equal(kept, full[..., top])
    assert "gamma_per_layer.png" not in result.paths and "logs" not in result.paths
    for path in result.paths.values():
        assert os.path.exists(path), path
    fashion_mnist.print_reference_result(result, 128)
    fashion_mnist.print_files(result.paths)
    printed = capsys.readouterr().out
    assert "the L1-norm cut (before fine-tuning) changed" in printed
    assert "pruned.tflite" in printed and "TensorBoard" not in printed
    with pytest.raises(ValueError, match="method must be one of"):
        tiny_default_flow(tmp_path, method="taylor")
