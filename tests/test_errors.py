"""One error root: every public exception derives from TfGammaPruneError (and keeps its built-in base)."""

import inspect

import pytest

import tf_gamma_prune
from tf_gamma_prune import errors
from tf_gamma_prune.reference_models import fashion_vgg

PUBLIC_ERRORS = sorted(
    name for name in tf_gamma_prune.__all__
    if inspect.isclass(getattr(tf_gamma_prune, name))
    and issubclass(getattr(tf_gamma_prune, name), BaseException)
)


def test_the_package_exports_its_errors():
    assert len(PUBLIC_ERRORS) >= 20
    defined = {n for n, v in vars(errors).items() if inspect.isclass(v) and issubclass(v, Exception)}
    assert set(PUBLIC_ERRORS) == defined, "every error lives in tf_gamma_prune.errors and is public"


@pytest.mark.parametrize("name", PUBLIC_ERRORS)
def test_every_public_error_has_the_root(name):
    cls = getattr(tf_gamma_prune, name)
    assert issubclass(cls, tf_gamma_prune.TfGammaPruneError)
    assert cls.__doc__ and cls.__doc__.strip(), f"{name} needs a docstring saying when it is raised"


@pytest.mark.parametrize("name, builtin", [
    ("SelectionError", ValueError), ("UnsupportedModelError", TypeError),
    ("UnsupportedLayerError", TypeError), ("ExportError", RuntimeError),
    ("ModelFileError", ValueError), ("CalibrationDataError", ValueError),
    ("DatasetNotFoundError", FileNotFoundError), ("AtomicWriteError", RuntimeError),
    ("NoBatchNormError", ValueError), ("DynamicShapeError", ValueError),
])
def test_builtin_bases_are_kept(name, builtin):
    assert issubclass(getattr(errors, name), builtin)


def test_a_bad_argument_is_caught_by_the_root_and_by_value_error():
    with pytest.raises(tf_gamma_prune.TfGammaPruneError, match="fold"):
        tf_gamma_prune.channel_graph(fashion_vgg(), fold="nope")
    with pytest.raises(ValueError, match="fold"):
        tf_gamma_prune.channel_graph(fashion_vgg(), fold="nope")


def test_old_module_paths_still_import():
    from tf_gamma_prune.graph import channel_graph as old
    from tf_gamma_prune.surgery import prune_model as old_prune

    assert old is tf_gamma_prune.channel_graph and old_prune is tf_gamma_prune.prune_model


PUBLIC_API_0_1 = """AtomicWriteError BorderCorrection CalibrationDataError ChannelGraph ConstantFeature CriterionError DynamicShapeError ExportError GammaISTA InexactRescaleError InputShapeError LayerCost ModelCost ModelFileError NetworkSlimming NoBatchNormError NonBuiltinOpError NonFiniteGammaError NonFiniteWeightError ParityError PruneReport RecalibrationDataError RemovalPlan ResumeError SelectionError SharedLayerError SparsityMonitor StepCheckpoint TargetUnreachableError UnsafeModelError UnsupportedLayerError UnsupportedModelError batchnorm_layers benchmark_latency builtin_op_names channel_graph check_parity compare_latency count_macs coupled_groups fit_resumable gamma_penalties gamma_sparsity gamma_threshold_selection gpu_compatibility l1_norm_selection layer_graph layer_widths load_keras_model model_cost plan_removal prune_model random_selection recalibrate_batchnorm register_layer_kind rescale_gamma save_keras_atomic selection_for_macs sparsity_summary to_tflite write_atomic""".split()


def test_the_public_api_of_0_1_is_still_there():
    assert set(PUBLIC_API_0_1) <= set(tf_gamma_prune.__all__)
