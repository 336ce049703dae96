"""The examples' main functions, with tiny settings on real data."""

import glob
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
