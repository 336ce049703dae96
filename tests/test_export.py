"""TFLite export: conversion variants, parity, op inspection, atomic writes, GPU report, latency."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import randomize_batchnorm, small_bn_convnet
from tf_gamma_prune import export
from tf_gamma_prune.export import latency
from tf_gamma_prune.export import (
    CalibrationDataError,
    ExportError,
    NonBuiltinOpError,
    ParityError,
    assert_builtin_only,
    builtin_op_names,
    check_parity,
    compare_latency,
    benchmark_latency,
    custom_op_names,
    gpu_compatibility,
    op_counts,
    to_tflite,
    to_tflite_variants,
)


@pytest.fixture(scope="module")
def convnet():
    keras.utils.set_random_seed(7)
    model = small_bn_convnet(input_shape=(16, 16, 1), widths=(8, 16))
    randomize_batchnorm(model, np.random.default_rng(0))
    x = np.random.default_rng(1).random((24, 16, 16, 1), dtype=np.float32)
    for i in range(3):
        model(x[i * 8:(i + 1) * 8], training=False)
    return model, x


@pytest.fixture(scope="module")
def float_tflite(convnet):
    return to_tflite(convnet[0])


def _io_dtypes(flatbuffer):
    interpreter = export.make_interpreter(flatbuffer)
    return interpreter.get_input_details()[0]["dtype"], interpreter.get_output_details()[0]["dtype"]


def _no_custom_ops(flatbuffer):
    names = builtin_op_names(flatbuffer)
    assert not [n for n in names if n.startswith("CUSTOM") or "Flex" in n], names
    assert custom_op_names(flatbuffer) == []


# --- conversion variants and parity -------------------------------------------------


def test_float32_export_matches_keras(convnet, float_tflite):
    model, x = convnet
    report = check_parity(model, float_tflite, x)
    assert report.n == len(x)
    assert report.max_rel <= 1e-4, report
    assert report.top1_agreement == 1.0
    report.assert_within(1e-4)
    names = builtin_op_names(float_tflite)
    assert {"CONV_2D", "FULLY_CONNECTED"} <= set(names), names
    _no_custom_ops(float_tflite)
    # BatchNormalization is folded away: no standalone MUL/ADD/RSQRT of a BN left
    assert not {"RSQRT", "VAR_HANDLE", "READ_VARIABLE"} & set(names), names


def test_parity_detects_a_different_model(convnet, float_tflite):
    model, x = convnet
    other = keras.models.clone_model(model)
    other.set_weights([w * 1.5 for w in model.get_weights()])
    report = check_parity(other, float_tflite, x)
    assert report.max_rel > 1e-2
    with pytest.raises(ParityError, match="relative"):
        report.assert_within(1e-4)


@pytest.mark.parametrize("quantization", ["float16", "dynamic"])
def test_weight_quantized_exports(convnet, float_tflite, quantization):
    model, x = convnet
    flatbuffer = to_tflite(model, quantization=quantization)
    assert len(flatbuffer) < len(float_tflite)
    _no_custom_ops(flatbuffer)
    report = check_parity(model, flatbuffer, x)
    assert report.max_rel < 0.05, report  # agreement is reported; quantized is not exact
    assert report.top1_agreement is not None and report.top1_agreement >= 0.9


def test_int8_float_io_from_list_of_numpy_batches(convnet):
    model, x = convnet
    flatbuffer = to_tflite(model, quantization="int8", representative_data=[x[:8], x[8:16], x[16:]])
    assert _io_dtypes(flatbuffer) == (np.float32, np.float32)
    _no_custom_ops(flatbuffer)
    assert {"QUANTIZE", "DEQUANTIZE"} <= set(builtin_op_names(flatbuffer))
    report = check_parity(model, flatbuffer, x)
    assert report.max_rel < 0.1, report
    assert report.top1_agreement >= 0.8


def test_int8_io_from_tf_data_with_labels(convnet):
    model, x = convnet
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x), "int64"))).batch(6)
    flatbuffer = to_tflite(model, quantization="int8", representative_data=dataset, int8_io=True)
    assert _io_dtypes(flatbuffer) == (np.int8, np.int8)
    _no_custom_ops(flatbuffer)
    assert "QUANTIZE" not in builtin_op_names(flatbuffer)
    report = check_parity(model, flatbuffer, x)  # inputs quantized, outputs dequantized
    assert report.max_rel < 0.1, report
    assert report.top1_agreement >= 0.8


def test_int8_without_representative_data_says_what_to_pass(convnet):
    with pytest.raises(CalibrationDataError, match="representative_data"):
        to_tflite(convnet[0], quantization="int8")
    with pytest.raises(CalibrationDataError, match="no examples"):
        to_tflite(convnet[0], quantization="int8", representative_data=[])


def test_bad_arguments_are_rejected(convnet):
    with pytest.raises(ExportError, match="quantization"):
        to_tflite(convnet[0], quantization="int4")
    with pytest.raises(ExportError, match="int8_io"):
        to_tflite(convnet[0], int8_io=True)


def test_fixed_batch_pads_the_last_chunk_and_dynamic_batch_resizes(convnet):
    model, x = convnet
    fixed = to_tflite(model, batch_size=4)
    assert export.make_interpreter(fixed).get_input_details()[0]["shape_signature"][0] == 4
    assert check_parity(model, fixed, x[:7]).max_rel <= 1e-4
    dynamic = to_tflite(model, batch_size=None)
    assert export.make_interpreter(dynamic).get_input_details()[0]["shape_signature"][0] == -1
    report = check_parity(model, dynamic, x, chunk=10)
    assert report.n == len(x) and report.max_rel <= 1e-4


def test_multi_input_multi_output_keeps_keras_order():
    zeta = keras.Input((4,), name="zeta")
    alpha = keras.Input((3,), name="alpha")
    h = keras.layers.Concatenate()([zeta, alpha])
    model = keras.Model(
        {"zeta": zeta, "alpha": alpha},
        [keras.layers.Dense(2, name="z_out")(h), keras.layers.Dense(5, name="a_out")(h)],
    )
    rng = np.random.default_rng(0)
    inputs = {"zeta": rng.random((6, 4), dtype=np.float32), "alpha": rng.random((6, 3), dtype=np.float32)}
    report = check_parity(model, to_tflite(model), inputs)
    assert report.max_rel <= 1e-4 and report.top1_agreement is None


# --- operator codes -----------------------------------------------------------------


def test_flex_ops_are_detected():
    @tf.function(input_signature=[tf.TensorSpec([4], tf.float32)])
    def erf_plus_one(x):
        return tf.math.erf(x) + 1.0

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [erf_plus_one.get_concrete_function()], erf_plus_one
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    flatbuffer = converter.convert()
    assert custom_op_names(flatbuffer) == ["FlexErf"]
    assert "CUSTOM:FlexErf" in builtin_op_names(flatbuffer)
    with pytest.raises(NonBuiltinOpError, match="FlexErf"):
        assert_builtin_only(flatbuffer)


def test_op_counts_and_paths(convnet, float_tflite, tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(float_tflite)
    assert op_counts(path) == op_counts(float_tflite)
    assert op_counts(float_tflite)["CONV_2D"] == 2
    with pytest.raises(ExportError, match="flatbuffer"):
        builtin_op_names(b"\x00" * 3)
    with pytest.raises(ExportError, match="Cannot read"):
        builtin_op_names(tmp_path / "missing.tflite")


# --- atomic writes ------------------------------------------------------------------


def _erf_model():
    x = keras.Input((4,))
    y = keras.layers.Dense(3)(x)
    return keras.Model(x, keras.ops.erf(y))


def test_variants_from_one_export_equal_separate_conversions(convnet, float_tflite, tmp_path,
                                                              monkeypatch):
    model, x = convnet
    sources = []
    original = tf.lite.TFLiteConverter.from_saved_model
    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model",
                        lambda path, *a, **k: sources.append(path) or original(path, *a, **k))
    calibration = [x[:8], x[8:16], x[16:]]
    files = to_tflite_variants(model, (None, "dynamic", "int8"), calibration, int8_io=True,
                               paths={"int8": tmp_path / "m_int8.tflite"})
    assert len(sources) == 3 and len(set(sources)) == 1  # one SavedModel for the three
    monkeypatch.undo()
    assert list(files) == [None, "dynamic", "int8"]
    assert files[None] == float_tflite  # the same file to_tflite writes
    assert files["dynamic"] == to_tflite(model, quantization="dynamic")
    assert _io_dtypes(files["int8"]) == (np.int8, np.int8)  # int8_io: the int8 variant only
    assert _io_dtypes(files["dynamic"]) == (np.float32, np.float32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_int8.tflite"]
    assert (tmp_path / "m_int8.tflite").read_bytes() == files["int8"]
    report = check_parity(model, files["int8"], x)
    assert report.max_rel < 0.1 and report.top1_agreement >= 0.8, report


def test_variants_refuse_bad_arguments_before_writing(convnet, tmp_path):
    model, x = convnet
    target = tmp_path / "f.tflite"
    for args, kwargs, error, match in [
        (((None, None),), {}, ExportError, "at most"),
        (((),), {}, ExportError, "at least one"),
        ((("int4",),), {}, ExportError, "int4"),
        (((None,),), {"paths": {"int8": target}}, ExportError, "not among"),
        (((None,),), {"int8_io": True}, ExportError, "int8_io"),
        (((None, "int8"),), {"paths": {None: target}}, CalibrationDataError, "representative_data"),
    ]:
        with pytest.raises(error, match=match):
            to_tflite_variants(model, *args, **kwargs)
    assert not target.exists()


def test_a_failed_variant_writes_none_of_the_files(tmp_path):
    paths = {None: tmp_path / "f.tflite", "dynamic": tmp_path / "d.tflite"}
    with pytest.raises(ExportError, match="Erf"):
        to_tflite_variants(_erf_model(), (None, "dynamic"), paths=paths)
    assert list(tmp_path.iterdir()) == []


def test_unconvertible_model_leaves_no_file(tmp_path):
    target = tmp_path / "out" / "model.tflite"
    with pytest.raises(ExportError, match="Erf") as info:
        to_tflite(_erf_model(), target)
    assert "Flex" in str(info.value)  # says why Flex is not an option
    assert not target.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_failing_converter_and_failing_rename_leave_old_file_and_no_temp(convnet, tmp_path, monkeypatch):
    target = tmp_path / "model.tflite"
    target.write_bytes(b"old")

    def boom(self):
        raise RuntimeError("converter exploded")

    from tensorflow.lite.python import lite

    monkeypatch.setattr(lite.TFLiteSavedModelConverterV2, "convert", boom)
    with pytest.raises(ExportError, match="converter exploded"):
        to_tflite(convnet[0], target)
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        export.write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


def test_successful_write_is_complete(convnet, float_tflite, tmp_path):
    target = tmp_path / "model.tflite"
    returned = to_tflite(convnet[0], target)
    assert target.read_bytes() == returned
    assert len(returned) == len(float_tflite)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


# --- GPU delegate readiness ---------------------------------------------------------


def test_gpu_report_plain_convnet(float_tflite):
    report = gpu_compatibility(float_tflite)
    assert report.compatible, report.summary()
    assert report.unsupported_ops == {} and report.dynamic_inputs == []
    assert "Op#0" in report.analyzer_text and "CONV_2D" in report.analyzer_text
    assert "every op supported" in report.summary()


def test_gpu_report_flags_topk_and_dynamic_shapes():
    x = keras.Input((8, 8, 3))
    h = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(x))
    model = keras.Model(x, keras.ops.top_k(h, 3)[0])
    flatbuffer = to_tflite(model)
    report = gpu_compatibility(flatbuffer)
    assert "TOPK_V2" in report.analyzer_text  # the analyzer sees the op...
    assert not report.compatible
    assert report.unsupported_ops == {"TOPK_V2": 1}  # ...and the op table rejects it
    assert "TOPK_V2" in report.summary()

    conv_only = keras.Model(x, keras.layers.Conv2D(4, 3)(x))
    dynamic = gpu_compatibility(to_tflite(conv_only, batch_size=None))
    assert not dynamic.compatible and dynamic.unsupported_ops == {}
    assert len(dynamic.dynamic_inputs) == 1


# --- latency ------------------------------------------------------------------------


def test_benchmark_latency_positive(float_tflite):
    report = benchmark_latency(float_tflite, num_threads=1, warmup=1, runs=5)
    assert report.runs == 5 and len(report.samples_ms) == 5
    assert 0 < report.p10_ms <= report.median_ms <= report.p90_ms
    with pytest.raises(ValueError):
        benchmark_latency(float_tflite, runs=0)


def test_compare_latency_alternates_and_counts(convnet, float_tflite, monkeypatch):
    small = to_tflite(small_bn_convnet(input_shape=(16, 16, 1), widths=(4, 8)))
    calls = []
    real = latency._TimedModel.invoke_timed

    def logged(self):
        calls.append(self.tag)
        return real(self)

    real_init = latency._TimedModel.__init__

    def tagged_init(self, tflite, num_threads, seed=0):
        real_init(self, tflite, num_threads, seed)
        self.tag = ("a" if bytes(tflite) == float_tflite else "b", num_threads)

    monkeypatch.setattr(latency._TimedModel, "__init__", tagged_init)
    monkeypatch.setattr(latency._TimedModel, "invoke_timed", logged)
    lines = []
    results = compare_latency(float_tflite, small, threads=(1, 2), warmup=2, runs=5, progress=lines.append,
                              timing="interleaved")

    assert [r.num_threads for r in results] == [1, 2]
    for r in results:
        assert r.a.runs == r.b.runs == 5
        assert r.a.median_ms > 0 and r.b.median_ms > 0 and r.speedup > 0
    for threads in (1, 2):
        seq = [who for who, t in calls if t == threads]
        assert seq[:4] == ["a", "a", "b", "b"]  # warm-up, each model on its own
        pairs = [tuple(seq[i:i + 2]) for i in range(4, len(seq), 2)]
        assert pairs == [("a", "b"), ("b", "a")] * 2 + [("a", "b")]
    assert len(lines) == 2 and "threads=2" in lines[1] and "interleaved" in lines[1]

    # steady: turns of one untimed + up to `block` timed invocations, a b, b a, ...
    calls.clear()
    (steady,) = compare_latency(float_tflite, small, threads=(1,), warmup=1, runs=5, block=2)
    assert steady.a.runs == steady.b.runs == 5
    seq = "".join(who for who, _ in calls)
    assert seq == "a" + "b" + "aaa" + "bbb" + "bbb" + "aaa" + "aa" + "bb"
    with pytest.raises(ValueError, match="block"):
        compare_latency(float_tflite, small, threads=(1,), block=0)
    with pytest.raises(ValueError, match="timing"):
        compare_latency(float_tflite, small, threads=(1,), timing="cold")



def test_latency_side_by_side_times_every_model_in_one_random_loop(float_tflite, monkeypatch):
    small = to_tflite(small_bn_convnet(input_shape=(16, 16, 1), widths=(4, 8)))
    models = [float_tflite, small, float_tflite]
    calls = []
    real = latency._TimedModel.invoke_timed
    real_init = latency._TimedModel.__init__
    count = iter(range(3))

    def tagged_init(self, tflite, num_threads, seed=0):
        real_init(self, tflite, num_threads, seed)
        self.tag = next(count)

    def logged(self):
        calls.append(self.tag)
        return real(self)

    monkeypatch.setattr(latency._TimedModel, "__init__", tagged_init)
    monkeypatch.setattr(latency._TimedModel, "invoke_timed", logged)
    reports = export.latency_side_by_side(models, runs=4, warmup=1, block=2, seed=3)
    assert [r.runs for r in reports] == [4, 4, 4] and all(r.median_ms > 0 for r in reports)
    turns = calls[3:]  # after one warm-up each, turns of 1 untimed + 2 timed
    orders = [[turns[i] for i in range(start, start + 9, 3)] for start in range(0, 18, 9)]
    rng = np.random.default_rng(3)
    assert orders == [rng.permutation(3).tolist() for _ in range(2)]
    assert calls[:3] == [0, 1, 2]
    with pytest.raises(ValueError, match="at least one model"):
        export.latency_side_by_side([])

# --- other model kinds, docs --------------------------------------------------------


def test_subclassed_model_needs_and_accepts_an_input_signature():
    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3)
            self.head = keras.layers.Dense(3)

        def call(self, x):
            return self.head(keras.ops.mean(self.conv(x), axis=(1, 2)))

    model = Tiny()
    x = np.random.default_rng(0).random((5, 8, 8, 3), dtype=np.float32)
    model(x)
    with pytest.raises(ExportError, match="input_signature"):
        to_tflite(model)
    flatbuffer = to_tflite(model, input_signature=[tf.TensorSpec((1, 8, 8, 3), tf.float32)])
    assert check_parity(model, flatbuffer, x).max_rel <= 1e-4


def test_carrier_fold_exports_without_border_adds():
    """fold='carrier' keeps the pruned model exact with no BorderCorrection ADDs in TFLite."""
    from tf_gamma_prune.analysis.batchnorm import randomize_batchnorm as randomize
    from tf_gamma_prune.prune.prune_model import prune_model

    keras.utils.set_random_seed(11)
    model = small_bn_convnet(input_shape=(16, 16, 1), widths=(8, 16, 8))
    randomize(model, seed=3, zero_fraction=0.5, positive_beta=True)  # relu(β) > 0: real constants
    x = np.random.default_rng(4).random((8, 16, 16, 1), dtype=np.float32)
    ops = {}
    for fold in ("exact", "carrier"):
        pruned = prune_model(model, fold=fold)
        flatbuffer = to_tflite(pruned)
        ops[fold] = op_counts(flatbuffer)
        assert check_parity(pruned, flatbuffer, x).max_rel <= 1e-4
        assert check_parity(model, flatbuffer, x).max_rel <= 1e-4  # the ORIGINAL function
    assert ops["exact"].get("ADD", 0) >= 2  # border rings after the padded readers
    assert "ADD" not in ops["carrier"]
    assert ops["carrier"]["CONV_2D"] == ops["exact"]["CONV_2D"] == 3
