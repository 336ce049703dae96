"""The command line: `python -m tf_gamma_prune export|prune|benchmark` in a subprocess."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import randomize_batchnorm, small_bn_convnet
from tf_gamma_prune.export import check_parity, make_interpreter, op_counts

REPO = pathlib.Path(__file__).resolve().parents[1]


def cli(*args, check=True):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "tf_gamma_prune", *map(str, args)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def saved_convnet(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = small_bn_convnet(input_shape=(12, 12, 1), widths=(6, 8))
    randomize_batchnorm(model, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("models") / "convnet.keras"
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def exported(saved_convnet, tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite") / "convnet.tflite"
    proc = cli("export", saved_convnet[1], "--tflite", out, "--parity_samples", "8")
    return out, proc


def test_export_writes_a_matching_flatbuffer(saved_convnet, exported):
    model, _ = saved_convnet
    out, proc = exported
    assert out.exists()
    assert "parity on 8 inputs" in proc.stdout and "GPU delegate" in proc.stdout
    assert op_counts(out)["CONV_2D"] == 2
    x = np.random.default_rng(0).random((5, 12, 12, 1), dtype=np.float32)
    assert check_parity(model, out, x).max_rel <= 1e-4


def test_export_int8_with_npy_calibration(saved_convnet, tmp_path):
    calibration = tmp_path / "cal.npy"
    np.save(calibration, np.random.default_rng(1).random((16, 12, 12, 1), dtype=np.float32))
    out = tmp_path / "int8.tflite"
    proc = cli("export", saved_convnet[1], "--tflite", out, "--quantize", "int8",
               "--calibration", f"npy:{calibration}", "--int8_io")
    assert "quantization=int8" in proc.stdout
    detail = make_interpreter(out).get_input_details()[0]
    assert detail["dtype"] == np.int8


def test_export_int8_without_calibration_is_refused(saved_convnet, tmp_path):
    out = tmp_path / "int8.tflite"
    proc = cli("export", saved_convnet[1], "--tflite", out, "--quantize", "int8", check=False)
    assert proc.returncode == 1
    assert "--calibration npy:PATH" in proc.stderr
    assert not out.exists()


def test_benchmark_two_models_writes_json(exported, tmp_path):
    out, _ = exported
    report = tmp_path / "bench.json"
    proc = cli("benchmark", out, out, "--threads", "1,2", "--runs", "3", "--warmup", "1", "--json", report)
    assert "speed-up A/B" in proc.stdout
    assert "[2/2] threads=2" in proc.stderr  # progress lines
    data = json.loads(report.read_text())
    assert set(data["threads"]) == {"1", "2"}
    for entry in data["threads"].values():
        assert entry["a"]["runs"] == entry["b"]["runs"] == 3
        assert entry["a"]["median_ms"] > 0 and entry["speedup"] > 0
    assert data["timing"] == "steady" and data["block"] == 10


def test_benchmark_interleaved_timing(exported, tmp_path):
    out, _ = exported
    report = tmp_path / "bench.json"
    proc = cli("benchmark", out, out, "--threads", "1", "--runs", "4", "--warmup", "0", "--timing", "interleaved",
               "--json", report)
    assert "(interleaved)" in proc.stderr
    data = json.loads(report.read_text())
    assert data["timing"] == "interleaved" and data["threads"]["1"]["b"]["runs"] == 4


def test_usage_errors():
    proc = cli("frobnicate", check=False)
    assert proc.returncode != 0 and "export, prune, benchmark" in proc.stderr
    proc = cli("export", "/nonexistent/model.keras", "--tflite", "/tmp/x.tflite", check=False)
    assert proc.returncode == 1 and "No such model file" in proc.stderr


def test_help_lists_the_commands_flags():
    proc = cli("--help", check=False)
    assert "Usage:" in proc.stdout and "export, prune" not in proc.stderr
    for flag in ("--target_macs: sparsify: MAC budget", "--fold: <auto|exact|carrier|bias>", "--[no]trust_model"):
        assert flag in proc.stdout, flag


def test_importing_the_cli_defines_no_process_wide_flags():
    """A notebook or script with its own absl flags (--epochs, --target_macs) can import the CLI."""
    code = (
        "from absl import flags\n"
        "import tf_gamma_prune.cli as cli\n"
        "flags.DEFINE_integer('epochs', 3, 'the script\\'s own flag')\n"
        "flags.DEFINE_string('target_macs', None, 'the script\\'s own flag')\n"
        "assert 'epochs' in cli.FLAGS and 'epochs' in flags.FLAGS\n"
        "print(flags.FLAGS(['x', '--epochs=5'])[0], flags.FLAGS.epochs)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["x", "5"]


def test_lambda_model_needs_trust(tmp_path):
    x = keras.Input((4,))
    y = keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Dense(3)(x))
    path = tmp_path / "lambda.keras"
    keras.Model(x, y).save(path)
    out = tmp_path / "lambda.tflite"

    refused = cli("export", path, "--tflite", out, check=False)
    assert refused.returncode == 1
    assert "Refused to load" in refused.stderr and "--trust_model" in refused.stderr
    assert not out.exists()

    accepted = cli("export", path, "--tflite", out, "--trust_model", "--parity_samples", "4")
    assert out.exists() and "parity on 4 inputs" in accepted.stdout


def test_prune_then_export(tmp_path):
    keras.utils.set_random_seed(5)
    model = small_bn_convnet(input_shape=(12, 12, 1), widths=(8, 8))
    randomize_batchnorm(model, np.random.default_rng(0))
    gamma = model.get_layer("bn0").gamma
    gamma.assign(np.where(np.arange(8) < 4, 0.0, gamma.numpy()).astype("float32"))
    src = tmp_path / "dense.keras"
    model.save(src)
    out, tfl = tmp_path / "pruned.keras", tmp_path / "pruned.tflite"

    proc = cli("prune", src, "--out", out, "--tflite", tfl, "--parity_samples", "4",
               "--fold", "exact")
    assert "wrote" in proc.stdout and out.exists() and tfl.exists()
    import tf_gamma_prune.layers  # noqa: F401  custom layers of pruned models

    pruned = keras.models.load_model(out)
    assert pruned.get_layer("conv0").filters == 4
    x = np.random.default_rng(2).random((4, 12, 12, 1), dtype=np.float32)
    assert check_parity(pruned, tfl, x).max_rel <= 1e-4
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    got = keras.ops.convert_to_numpy(pruned(x, training=False))
    assert np.max(np.abs(expected - got)) <= 1e-4 * np.max(np.abs(expected))


@pytest.fixture(scope="module")
def sparsify_inputs(tmp_path_factory):
    """A small fashion_vgg with spread γ, and random labelled 12×12 images."""
    from tf_gamma_prune.reference_models import fashion_vgg

    keras.utils.set_random_seed(4)
    # widths wide enough that one channel is a small MAC step: the budget check is ±5 %
    model = fashion_vgg(widths=(8, 8, 16, 16, 16, 16), input_shape=(12, 12, 1))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.05, 1.5, layer.gamma.shape))
    directory = tmp_path_factory.mktemp("sparsify")
    np.savez(directory / "data.npz", x=rng.random((256, 12, 12, 1), dtype=np.float32),
             y=rng.integers(0, 10, 256))
    model.save(directory / "dense.keras")
    return model, directory


@pytest.mark.parametrize("flag, metric", [("--target_macs", "macs"), ("--target_params", "params")])
def test_sparsify_to_a_budget(sparsify_inputs, tmp_path, flag, metric):
    from tf_gamma_prune import count_macs

    model, directory = sparsify_inputs
    out = tmp_path / "pruned.keras"
    proc = cli("sparsify", directory / "dense.keras", "--out", out, "--data",
               f"npz:{directory / 'data.npz'}", flag, "1/2", "--epochs", "3",
               "--train_batch_size", "16", "--every", "4", "--min_channels", "1",
               "--learning_rate", "0.02", "--fold", "bias")
    assert "epoch 3/3" in proc.stdout and "rho: 0:" in proc.stdout and out.exists()
    start = count_macs(model) if metric == "macs" else model.count_params()
    budget = round(start / 2)
    assert f"budget {budget:,} {metric}" in proc.stdout
    import tf_gamma_prune.layers  # noqa: F401  custom layers of pruned models

    pruned = keras.models.load_model(out)
    cost = count_macs(pruned) if metric == "macs" else pruned.count_params()
    assert abs(cost - budget) <= 0.05 * budget, proc.stdout


def test_sparsify_refuses_ambiguous_or_bad_budgets(sparsify_inputs, tmp_path):
    _, directory = sparsify_inputs
    common = ["sparsify", directory / "dense.keras", "--out", tmp_path / "p.keras", "--data",
              f"npz:{directory / 'data.npz'}"]
    both = cli(*common, "--target_macs", "0.5", "--rho", "0.1", check=False)
    assert both.returncode == 1 and "exactly one of --target_macs" in both.stderr
    bad = cli(*common, "--target_params", "1.5", check=False)
    assert bad.returncode == 1 and "fraction in (0, 1)" in bad.stderr
    assert not (tmp_path / "p.keras").exists()


def test_budgets_parse_as_fractions_or_counts():
    from tf_gamma_prune.cli import CliError, parse_budget

    assert parse_budget("1/3", "--target_macs") == pytest.approx(1 / 3)
    assert parse_budget("0.25", "--target_macs") == 0.25
    assert parse_budget("5e6", "--target_macs") == 5_000_000
    assert isinstance(parse_budget("100000", "--target_params"), int)
    for bad in ("1.5", "0", "-2", "a/b", "1/0", "many"):
        with pytest.raises(CliError, match="--target_params"):
            parse_budget(bad, "--target_params")


def test_sparsify_with_a_seed_repeats_exactly(sparsify_inputs, tmp_path):
    """--seed seeds every random op and makes TensorFlow's ops deterministic: two runs give the
    same ρ history and the same pruned weights (without it two runs differ)."""
    _, directory = sparsify_inputs
    runs = []
    for i in range(2):
        out = tmp_path / f"pruned{i}.keras"
        proc = cli("sparsify", directory / "dense.keras", "--out", out, "--data",
                   f"npz:{directory / 'data.npz'}", "--target_macs", "1/2", "--epochs", "2",
                   "--train_batch_size", "16", "--every", "4", "--min_channels", "1",
                   "--learning_rate", "0.02", "--fold", "bias", "--seed", "7")
        history = next(line for line in proc.stdout.splitlines() if line.startswith("rho: "))
        runs.append((history, keras.models.load_model(out).get_weights()))
    assert runs[0][0] == runs[1][0] and len(runs[0][0].split()) > 3
    assert len(runs[0][1]) == len(runs[1][1])
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)
