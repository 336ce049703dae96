"""Quantization-aware training (tensorflow-model-optimization) of pruned Keras 3 models, isolated.

Install the extra: ``pip install "tf-gamma-prune[tfmot]"``
(``tensorflow-model-optimization`` and the ``tf-keras`` matching TensorFlow).

tfmot only works on tf_keras (legacy Keras 2) models, and TensorFlow picks its
Keras once per process. :func:`quantize_aware_finetune` therefore converts the
Keras 3 model to tf_keras explicitly, layer by layer, and runs tfmot's
``quantize_apply``, the fine-tuning and the int8 conversion in a separate Python
process; it returns the int8 ``.tflite`` and its accuracy (:class:`QATResult`).
Your process never imports tf_keras or tfmot and keeps Keras 3
(``TF_USE_LEGACY_KERAS``, ``tf.keras`` and ``sys.modules`` are left as they were).

One module per concept:

* :mod:`.spec` — Keras 3 model → framework-free description (:func:`model_spec`,
  :data:`SUPPORTED_LAYERS`);
* :mod:`.isolate` — the separate process and its job folder (:func:`run_worker`);
* :mod:`.finetune` — :func:`quantize_aware_finetune`, :func:`tf_keras_outputs`;
* ``_isolated/`` (not a package: only the worker process runs it) — the tf_keras
  side: ``BorderCorrection`` / ``ConstantFeature`` twins, the model builder, tfmot.

Importing this module imports neither tf_keras nor tfmot:

>>> import sys, tf_gamma_prune.qat
>>> "tensorflow_model_optimization" in sys.modules, "tf_keras" in sys.modules
(False, False)
>>> "BorderCorrection" in SUPPORTED_LAYERS and "ConstantFeature" in SUPPORTED_LAYERS
True
"""

from tf_gamma_prune.errors import QATDependencyError, QATError
from tf_gamma_prune.qat.finetune import QATResult, quantize_aware_finetune, tf_keras_outputs
from tf_gamma_prune.qat.spec import SUPPORTED_LAYERS, model_spec

__all__ = ["QATDependencyError", "QATError", "QATResult", "SUPPORTED_LAYERS", "model_spec",
           "quantize_aware_finetune", "tf_keras_outputs"]
