"""Bad and hostile input: every failure is a typed error that says what is wrong, and a
failing command line leaves no output file behind.

Library functions are called directly; the command line runs in-process (absl flags
parsed per call) except for two real subprocess runs that check the exit status and
that no traceback reaches the user.
"""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from conftest import randomize_batchnorm, small_bn_convnet
from tf_gamma_prune import DynamicShapeError, NonFiniteWeightError, SelectionError, prune_model
from tf_gamma_prune.export import (
    CalibrationDataError,
    InputShapeError,
    ModelFileError,
    UnsafeModelError,
    benchmark_latency,
    check_parity,
    compare_latency,
    load_keras_model,
    make_interpreter,
    op_counts,
    read_tflite,
    to_tflite,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
L = keras.layers


# ----------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------


def _rezip(src: pathlib.Path, dst: pathlib.Path, member: str, damage) -> None:
    """Copy a .keras archive, passing one member's bytes through ``damage``."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for info in a.infolist():
            data = a.read(info.filename)
            b.writestr(info.filename, damage(data) if info.filename == member else data)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    keras.utils.set_random_seed(3)
    model = small_bn_convnet(input_shape=(12, 12, 1), widths=(6, 8))
    randomize_batchnorm(model, np.random.default_rng(0))
    model.save(d / "good.keras")
    flatbuffer = to_tflite(model, d / "good.tflite")

    raw = (d / "good.keras").read_bytes()
    (d / "truncated.keras").write_bytes(raw[: len(raw) // 2])
    (d / "empty.keras").write_bytes(b"")
    (d / "text.keras").write_bytes(b"not a model\n" * 20)
    with zipfile.ZipFile(d / "good.keras") as z:
        weights = z.getinfo("model.weights.h5")
    flipped = bytearray(raw)  # one bit flipped inside the (stored) weights member
    flipped[weights.header_offset + 100 + weights.compress_size // 2] ^= 0x10
    (d / "bitrot.keras").write_bytes(bytes(flipped))
    _rezip(d / "good.keras", d / "half_config.keras", "config.json", lambda b: b[: len(b) // 2])
    _rezip(d / "good.keras", d / "half_weights.keras", "model.weights.h5", lambda b: b[: len(b) // 2])
    with zipfile.ZipFile(d / "no_config.keras", "w") as z:
        z.writestr("readme.txt", "hello")

    (d / "truncated.tflite").write_bytes(flatbuffer[: len(flatbuffer) // 2])
    (d / "header_only.tflite").write_bytes(flatbuffer[:64])
    (d / "zeros.tflite").write_bytes(b"\0" * 256)
    (d / "empty.tflite").write_bytes(b"")

    kernel = np.asarray(model.get_layer("conv1").kernel).copy()
    kernel[1, 1, 0, 2] = np.nan
    model.get_layer("conv1").kernel.assign(kernel)
    model.save(d / "nan.keras")

    x = keras.Input((4,))
    y = L.Lambda(lambda t: t * 2.0, name="double")(L.BatchNormalization()(L.Dense(3)(x)))
    keras.Model(x, L.Dense(2)(y)).save(d / "lambda.keras")

    _dynamic_model().save(d / "dynamic.keras")
    np.save(d / "wrong_shape.npy", np.zeros((8, 10, 10, 1), "float32"))
    return d


def _dynamic_model():
    """Dynamic spatial input; a zero γ before a 'same'-padded conv (constant channel, border effect)."""
    x = keras.Input((None, None, 3))
    h = L.ReLU()(L.BatchNormalization(name="bn0")(L.Conv2D(4, 3, padding="same", name="c0")(x)))
    h = L.Conv2D(2, 3, padding="same", name="c1")(h)
    model = keras.Model(x, L.GlobalAveragePooling2D()(h))
    model.get_layer("bn0").gamma.assign([0.0, 1.0, 1.0, 1.0])
    model.get_layer("bn0").beta.assign([0.5, 0.0, 0.0, 0.0])  # constant 0.5 after ReLU
    return model


# ----------------------------------------------------------------------------
# corrupt .keras / .tflite through the library
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,match", [
    ("truncated.keras", "not a complete .keras archive.*truncated"),
    ("empty.keras", "not a complete .keras archive"),
    ("text.keras", "not a complete .keras archive"),
    ("bitrot.keras", "corrupt: member 'model.weights.h5' fails its CRC check"),
    ("half_config.keras", "Cannot load .* as a Keras model \\(JSONDecodeError"),
    ("half_weights.keras", "Cannot load .* as a Keras model"),
    ("no_config.keras", "without config.json"),
    ("missing.keras", "No such model file"),
])
def test_bad_keras_files_raise_model_file_error(files, name, match):
    with pytest.raises(ModelFileError, match=match):
        load_keras_model(files / name)


def test_lambda_model_is_refused_in_safe_mode_and_loads_when_trusted(files):
    with pytest.raises(UnsafeModelError, match="Lambda.*trust=True"):
        load_keras_model(files / "lambda.keras")
    model = load_keras_model(files / "lambda.keras", trust=True)
    assert any(isinstance(layer, L.Lambda) for layer in model.layers)


@pytest.mark.parametrize("name,match", [
    ("truncated.tflite", "LiteRT cannot load the model"),
    ("header_only.tflite", "LiteRT cannot load the model"),
    ("zeros.tflite", "no 'TFL3' identifier"),
    ("empty.tflite", "0 bytes, no 'TFL3' identifier"),
    ("missing.tflite", "Cannot read TFLite model"),
])
def test_bad_tflite_files_raise_model_file_error(files, name, match):
    path = files / name
    with pytest.raises(ModelFileError, match=match):
        make_interpreter(path)
    with pytest.raises(ModelFileError):
        benchmark_latency(path, runs=1, warmup=0)
    with pytest.raises(ModelFileError):
        compare_latency(files / "good.tflite", path, threads=(1,), runs=1, warmup=0)
    with pytest.raises(ModelFileError):
        check_parity(keras.models.load_model(files / "good.keras"), path,
                     np.zeros((2, 12, 12, 1), "float32"))
    if path.exists():
        with pytest.raises(ModelFileError):
            op_counts(path.read_bytes())


def test_gpu_compatibility_of_truncated_flatbuffer_is_an_error_not_a_segfault(files):
    """TF's model analyzer segfaults on truncated flatbuffers; the verifier must run first.

    In a subprocess: a regression would kill the test session.
    """
    code = (
        "import sys\n"
        "from tf_gamma_prune.export import ModelFileError, gpu_compatibility, analyzer_text\n"
        "for path in sys.argv[1:]:\n"
        "    for fn in (gpu_compatibility, analyzer_text):\n"
        "        try:\n"
        "            fn(path)\n"
        "        except ModelFileError as e:\n"
        "            print('ModelFileError', e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(files / "truncated.tflite"), str(files / "header_only.tflite")],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert proc.stdout.count("ModelFileError") == 4, proc.stdout


def test_read_tflite_checks_bytes_too():
    with pytest.raises(ModelFileError, match="The given bytes is not a TFLite flatbuffer"):
        read_tflite(b"PK\x03\x04 a zip, not a flatbuffer")


# ----------------------------------------------------------------------------
# wrong input shapes
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(files):
    model = keras.models.load_model(files / "good.keras")
    return model, (files / "good.tflite").read_bytes()


@pytest.mark.parametrize("shape", [(4, 10, 10, 1), (4, 12, 12, 3), (4, 12, 12), (4, 144)])
def test_check_parity_with_wrong_input_shape_says_the_expected_shape(exported, shape):
    model, flatbuffer = exported
    with pytest.raises(InputShapeError, match=r"has shape \(4, .*expects \(None, 12, 12, 1\)"):
        check_parity(model, flatbuffer, np.zeros(shape, "float32"))


def test_check_parity_without_examples(exported):
    model, flatbuffer = exported
    with pytest.raises(InputShapeError, match="no examples"):
        check_parity(model, flatbuffer, np.zeros((0, 12, 12, 1), "float32"))


def test_check_parity_with_dynamic_batch_export_still_checks_sizes(exported):
    model, _ = exported
    dynamic = to_tflite(model, batch_size=None)
    with pytest.raises(InputShapeError, match=r"expects \(None, 12, 12, 1\)"):
        check_parity(model, dynamic, np.zeros((3, 13, 12, 1), "float32"))
    assert check_parity(model, dynamic, np.zeros((3, 12, 12, 1), "float32")).n == 3


def test_int8_calibration_data_of_wrong_shape_says_the_expected_shape(exported, tmp_path):
    model, _ = exported
    out = tmp_path / "int8.tflite"
    with pytest.raises(CalibrationDataError, match=r"\(8, 10, 10, 1\).*expects \((1|None), 12, 12, 1\)"):
        to_tflite(model, out, quantization="int8", representative_data=[np.zeros((8, 10, 10, 1), "float32")])
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------
# prune_model on bad models and selections (behaviour of surgery/selection)
# ----------------------------------------------------------------------------


def _selection_model():
    x = keras.Input((6, 6, 3))
    y = L.ReLU()(L.BatchNormalization(name="a_bn")(L.Conv2D(6, 3, padding="same", name="a_conv")(x)))
    y = L.ReLU()(L.BatchNormalization(name="b_bn")(L.Conv2D(4, 3, padding="same", name="b_conv")(y)))
    model = keras.Model(x, L.Conv2D(2, 1, name="head")(y))
    randomize_batchnorm(model, np.random.default_rng(1))
    return model


@pytest.mark.parametrize("keep", [[], np.zeros(6, bool), np.array([], int)], ids=["list", "mask", "array"])
@pytest.mark.parametrize("layer", ["a_bn", "a_conv"])
def test_selection_removing_every_channel_of_a_layer(layer, keep):
    with pytest.raises(SelectionError, match=f"removes every channel of '{layer}'"):
        prune_model(_selection_model(), {layer: keep})


def test_empty_selection_dict_is_refused():
    # {} is most likely a criterion that selected nothing, not a request for the default
    with pytest.raises(SelectionError, match="names no layer.*selection=None"):
        prune_model(_selection_model(), {})


def test_dynamic_spatial_shape_with_exact_fold():
    model = _dynamic_model()
    with pytest.raises(DynamicShapeError, match="'c1'.*no static spatial size.*fold='bias'"):
        prune_model(model, fold="exact")
    assert prune_model(model, fold="bias").get_layer("c0").filters == 3  # the documented way out


def test_non_finite_weights_name_the_layer():
    model = _selection_model()
    model.get_layer("b_bn").beta.assign([0.0, np.inf, 0.0, 0.0])
    with pytest.raises(NonFiniteWeightError, match="'b_bn'"):
        prune_model(model)


def test_calibration_data_of_wrong_spatial_size_is_refused():
    with pytest.raises(CalibrationDataError, match=r"shape \(4, 5, 5, 3\).*expects \(None, 6, 6, 3\)"):
        prune_model(_selection_model(), {"a_bn": [0, 1]}, calibration_data=np.ones((4, 5, 5, 3), "float32"))


def test_calibration_data_with_wrong_channels_says_the_expected_shape():
    with pytest.raises(CalibrationDataError, match=r"shape \(4, 6, 6, 2\).*expects \(None, 6, 6, 3\)"):
        prune_model(_selection_model(), {"a_bn": [0, 1]}, calibration_data=np.ones((4, 6, 6, 2), "float32"))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_calibration_data_is_refused(value):
    data = np.ones((2, 6, 6, 3), "float32")
    data[1, 2, 3, 0] = value
    with pytest.raises(CalibrationDataError, match=r"1 non-finite value"):
        prune_model(_selection_model(), {"a_bn": [0, 1]}, calibration_data=data)


@pytest.mark.parametrize("data", [np.ones((0, 6, 6, 3), "float32"), iter([])], ids=["array", "iterator"])
def test_empty_calibration_data_is_refused_clearly(data):
    with pytest.raises(CalibrationDataError, match="no examples; at least one example is needed"):
        prune_model(_selection_model(), {"a_bn": [0, 1]}, calibration_data=data)


def test_calibration_data_is_checked_even_without_a_selection():
    with pytest.raises(CalibrationDataError, match=r"expects \(None, 6, 6, 3\)"):
        prune_model(_selection_model(), calibration_data=np.ones((4, 6, 6, 2), "float32"))


# ----------------------------------------------------------------------------
# the command line: exit status 1, one-line error, no output file
# ----------------------------------------------------------------------------


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``python -m tf_gamma_prune ARGS`` in this process: (exit status, stdout, stderr)."""
    from tf_gamma_prune import cli

    capsys.readouterr()
    cli.FLAGS.unparse_flags()
    argv = cli.FLAGS(["tf_gamma_prune", *map(str, args)])
    code = 0
    try:
        cli.main(argv)
    except SystemExit as e:
        code = e.code
    finally:
        cli.FLAGS.unparse_flags()
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def _assert_failed_cleanly(result, out_dir, match):
    code, out, err = result
    assert code == 1, (code, out, err)
    assert err.startswith("error: ") and "Traceback" not in err, err
    import re

    assert re.search(match, err), err
    assert list(out_dir.iterdir()) == [], f"left behind: {list(out_dir.iterdir())}"


@pytest.mark.parametrize("command,name,match", [
    ("export", "truncated.keras", "not a complete .keras archive"),
    ("export", "bitrot.keras", "fails its CRC check"),
    ("prune", "empty.keras", "not a complete .keras archive"),
    ("prune", "half_weights.keras", "Cannot load .* as a Keras model"),
    ("prune", "lambda.keras", "Refused to load .*--trust_model"),
])
def test_cli_bad_keras_file(files, out_dir, capsys, command, name, match):
    target = ["--tflite", out_dir / "m.tflite"] if command == "export" else ["--out", out_dir / "m.keras"]
    _assert_failed_cleanly(run_cli(capsys, command, files / name, *target), out_dir, match)


@pytest.mark.parametrize("names,match", [
    (["truncated.tflite"], "LiteRT cannot load the model"),
    (["good.tflite", "zeros.tflite"], "not a TFLite flatbuffer"),
])
def test_cli_benchmark_bad_tflite_file(files, out_dir, capsys, names, match):
    args = [files / n for n in names] + ["--runs", "1", "--warmup", "0", "--threads", "1",
                                        "--json", out_dir / "bench.json"]
    _assert_failed_cleanly(run_cli(capsys, "benchmark", *args), out_dir, match)


def test_cli_prune_trusted_lambda_model_is_refused_by_prune_model(files, out_dir, capsys):
    result = run_cli(capsys, "prune", files / "lambda.keras", "--out", out_dir / "m.keras", "--trust_model")
    _assert_failed_cleanly(result, out_dir, "'double' is a Lambda layer")


def test_cli_prune_non_finite_weights(files, out_dir, capsys):
    result = run_cli(capsys, "prune", files / "nan.keras", "--out", out_dir / "m.keras",
                     "--tflite", out_dir / "m.tflite")
    _assert_failed_cleanly(result, out_dir, "'conv1'.*(NaN|non-finite|nan)")


def test_cli_prune_dynamic_shape_exact_fold(files, out_dir, capsys):
    result = run_cli(capsys, "prune", files / "dynamic.keras", "--out", out_dir / "m.keras",
                     "--fold", "exact")
    _assert_failed_cleanly(result, out_dir, "no static spatial size")


def test_cli_prune_dynamic_shape_default_fold_works(files, out_dir, capsys):
    result = run_cli(capsys, "prune", files / "dynamic.keras", "--out", out_dir / "m.keras")
    assert result[0] == 0 and (out_dir / "m.keras").exists()


def test_cli_prune_writes_nothing_when_the_export_step_fails(files, out_dir, capsys):
    """The pruned .keras is not written when the .tflite of the same command cannot be made."""
    result = run_cli(capsys, "prune", files / "good.keras", "--out", out_dir / "m.keras",
                     "--tflite", out_dir / "m.tflite", "--quantize", "int8")
    _assert_failed_cleanly(result, out_dir, "--quantize int8 needs --calibration")


def test_cli_export_with_calibration_of_wrong_shape(files, out_dir, capsys):
    result = run_cli(capsys, "export", files / "good.keras", "--tflite", out_dir / "m.tflite",
                     "--calibration", f"npy:{files / 'wrong_shape.npy'}")
    _assert_failed_cleanly(result, out_dir, r"\(8, 10, 10, 1\) do not fit the model input \(None, 12, 12, 1\)")


def test_cli_unwritable_output(files, out_dir, capsys):
    blocker = out_dir.parent / "a_file"
    blocker.write_text("not a directory")
    result = run_cli(capsys, "export", files / "good.keras", "--tflite", blocker / "m.tflite",
                     "--parity_samples", "0")
    _assert_failed_cleanly(result, out_dir, "a_file")


def test_cli_in_a_real_process_exits_1_without_traceback(files, tmp_path):
    """The subprocess view: exit status 1 and one error line, for a TypeError-based error too."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    runs = [
        ["export", files / "truncated.keras", "--tflite", tmp_path / "a.tflite"],
        ["prune", files / "lambda.keras", "--out", tmp_path / "b.keras", "--trust_model"],
    ]
    procs = [subprocess.Popen([sys.executable, "-m", "tf_gamma_prune", *map(str, args)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in runs]
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 1, err[-3000:]
        assert "Traceback" not in err and "\nerror: " in "\n" + err, err[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
