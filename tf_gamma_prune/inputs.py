"""User data → batches of model inputs: the one parser behind every function that takes data.

``prune_model(calibration_data=...)``, ``to_tflite(representative_data=...)``
and ``recalibrate_batchnorm(model, data)`` accept the same things, read by
:func:`model_input_batches`:

* **one batch**: a numpy array or tensor (single-input model); a dict keyed by
  the model's input names; a tuple ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``
  whose ``x`` is one batch (``y`` is ignored); for a multi-input model a list or
  tuple with one array per input (Keras' convention for ``fit``);
* **a stream of batches**: a ``tf.data.Dataset``, an iterator or generator, or
  a list of batches (each element read as one batch as above).

A single example without its batch axis is accepted. Every batch is checked
against the model's input shapes (``None`` = any size), for a consistent
number of examples across inputs, and for NaN/Inf; the error class and the
argument's name in the messages are the caller's.

>>> import numpy as np
>>> specs = [InputSpec("image", (None, 4, 4, 1))]
>>> x = np.zeros((10, 4, 4, 1), "float32")
>>> [b[0].shape[0] for b in model_input_batches((x, np.zeros(10)), specs, batch_size=4)]
[4, 4, 2]
>>> model_input_batches(np.zeros((2, 5, 5, 1)), specs, what="data").__next__()
Traceback (most recent call last):
...
tf_gamma_prune.errors.InputDataError: data for input 'image' has shape (2, 5, 5, 1); the model expects (None, 4, 4, 1) (batch first, None = any size).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from tf_gamma_prune.errors import CalibrationDataError, InputDataError


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input: its name (Keras' dict key) and shape, batch first."""

    name: str
    shape: tuple | None  # None: unknown (a subclassed model), not checked


def input_specs(model: Any, strict: bool = True) -> list[InputSpec]:
    """The :class:`InputSpec` of each input of a functional/Sequential model, in order.

    With ``strict=False`` a model without symbolic inputs (subclassed) gets one
    input of unknown shape instead of an ``UnsupportedModelError``.
    """
    from tf_gamma_prune.analysis.layer_graph import functional_core
    from tf_gamma_prune.errors import UnsupportedModelError

    try:
        inputs = functional_core(model).inputs
    except UnsupportedModelError:
        if strict:
            raise
        return [InputSpec("input", None)]
    return [InputSpec(input_name(t, i), tuple(t.shape)) for i, t in enumerate(inputs)]


def input_name(tensor: Any, index: int) -> str:
    """The name of the InputLayer behind a model input (Keras' dict key for it)."""
    history = getattr(tensor, "_keras_history", None)
    name = getattr(history[0], "name", None) if history else None
    return name or getattr(tensor, "name", None) or f"input {index}"


def model_input_batches(
    data: Any,
    specs: Sequence[InputSpec],
    *,
    what: str = "data",
    error: type[InputDataError] = InputDataError,
    batch_size: int | None = None,
    max_examples: int | None = None,
) -> Iterator[list[np.ndarray]]:
    """Batches of ``data`` as lists of arrays in the model's input order (see the module doc).

    Args:
        batch_size: split one in-memory batch into batches of this size.
        max_examples: stop reading a stream once this many examples were read.

    Raises:
        ``error`` (an :class:`InputDataError`): a structure that does not fit
            the inputs, a wrong shape (expected and received in the message),
            inputs with different example counts, NaN/Inf values.
    """
    if not is_stream(data, len(specs)):
        arrays = _checked(data, specs, what, error)
        n = arrays[0].shape[0] if arrays else 0
        step = batch_size or max(n, 1)
        for start in range(0, n, step):
            yield [a[start:start + step] for a in arrays]
        return
    count = 0
    for element in (data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data):
        arrays = _checked(element, specs, what, error)
        if arrays[0].shape[0]:
            yield arrays
            count += arrays[0].shape[0]
        if max_examples is not None and count >= max_examples:
            return


def is_stream(data: Any, n_inputs: int = 1) -> bool:
    """A dataset, iterator, generator or list of batches (not itself one batch).

    For a model with ``n_inputs > 1`` a list of that many arrays is one batch.
    """
    if isinstance(data, (np.ndarray, tuple, Mapping, str, bytes)):
        return False
    if isinstance(data, list) and n_inputs > 1 and len(data) == n_inputs and not any(
        isinstance(e, (list, tuple, Mapping)) for e in data
    ):
        return False
    if hasattr(data, "shape") and hasattr(data, "dtype"):  # a tensor
        return False
    return hasattr(data, "__iter__")


def input_structure(model: Any) -> Any:
    """``model.input`` (tensor, list or dict of inputs) or ``None`` for subclassed models."""
    try:
        return model.input
    except (AttributeError, ValueError):
        return None


def pack_inputs(model: Any, arrays: list) -> Any:
    """Arrange flat inputs (in ``model.inputs`` order) the way ``model`` is called."""
    import keras

    structure = input_structure(model)
    if structure is not None and len(keras.tree.flatten(structure)) == len(arrays):
        return keras.tree.pack_sequence_as(structure, list(arrays))
    return arrays[0] if len(arrays) == 1 else list(arrays)


def _checked(element: Any, specs: Sequence[InputSpec], what: str,
             error: type[InputDataError]) -> list[np.ndarray]:
    arrays = []
    for x, spec in zip(_one_batch(element, specs, what, error), specs):
        received = tuple(np.shape(x))
        x = np.asarray(x)
        if spec.shape is not None and x.ndim == len(spec.shape) - 1:
            x = x[None]  # one example without its batch axis
        if not _fits(x.shape, spec.shape):
            raise error(
                f"{what} for input '{spec.name}' has shape {received}; the model expects "
                f"{tuple(spec.shape)} (batch first, None = any size)."
            )
        if x.dtype.kind in "fc" and not np.all(np.isfinite(x)):
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise error(
                f"{what} for input '{spec.name}' has {bad} non-finite value(s) (NaN/Inf); "
                "statistics computed from it would be non-finite. Clean or re-preprocess the data."
            )
        arrays.append(x)
    counts = [a.shape[0] for a in arrays]
    if len(set(counts)) > 1:
        raise error(f"{what}: the inputs hold different numbers of examples: {counts}.")
    return arrays


def _fits(shape: tuple, expected: tuple | None) -> bool:
    if expected is None:
        return len(shape) >= 1
    return len(shape) == len(expected) and all(
        d is None or d == n for d, n in zip(expected[1:], shape[1:]))


def _one_batch(element: Any, specs: Sequence[InputSpec], what: str,
               error: type[InputDataError]) -> list[Any]:
    """One batch's arrays in the model's input order; ``(x, y[, w])`` gives ``x``."""
    names = [s.name for s in specs]
    n = len(names)
    if isinstance(element, Mapping):
        if all(name in element for name in names):
            return [element[name] for name in names]
        if n > 1 or len(element) != 1:
            raise error(f"{what} dict has keys {sorted(map(str, element))}; the model's inputs "
                        f"are {names}.")
        return list(element.values())
    if isinstance(element, (list, tuple)):
        nested = [isinstance(e, (list, tuple, Mapping)) for e in element]
        if n > 1 and len(element) == n and not any(nested):
            return list(element)
        if len(element) in (1, 2, 3) and (n == 1 or nested[0]):
            return _one_batch(element[0], specs, what, error)  # (x,), (x, y), (x, y, w)
        shapes = [tuple(s.shape) for s in specs]
        raise error(
            f"{what} is a {type(element).__name__} of {len(element)} items; the model takes "
            f"{n} input(s) of shape {shapes[0] if n == 1 else shapes}. Pass one batch (one array "
            "per input, optionally as (x, y)), or a tf.data.Dataset / iterator of batches."
        )
    if n != 1:
        raise error(f"{what} is one array; the model takes {n} inputs {names}: pass a list or "
                    "dict of arrays.")
    return [element]


def calibration_inputs(source: str, input_shape: Sequence[int | None], n: int = 200, seed: int = 0) -> np.ndarray:
    """Calibration/parity inputs for a single-input model, from a short spec.

    ``source`` is one of:

    * ``"npy:PATH"``: a ``.npy`` array of model inputs (batch first), already
      preprocessed exactly like the model's training inputs;
    * ``"fashion_mnist"``: the first ``n`` Fashion-MNIST training images,
      (N, 28, 28, 1) float32 in [0, 1] (offline copy only; see
      :func:`tf_gamma_prune.data.load_fashion_mnist`);
    * ``"random"``: uniform [0, 1) noise. **Only for smoke tests**: int8 ranges
      calibrated on noise do not match real data.

    >>> calibration_inputs("random", (None, 4, 4, 3), n=2).shape
    (2, 4, 4, 3)
    """
    shape = tuple(input_shape[1:])
    if source == "random":
        if any(d is None for d in shape):
            raise CalibrationDataError(f"Cannot draw random inputs for a dynamic input shape {input_shape}.")
        x = np.random.default_rng(seed).random((n,) + shape, dtype=np.float32)
    elif source.startswith("npy:"):
        try:
            x = np.load(source[4:], allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CalibrationDataError(f"Cannot read calibration array {source[4:]!r}: {e}") from e
        x = np.asarray(x, dtype=np.float32)[:n]
    elif source == "fashion_mnist":
        from tf_gamma_prune.data import load_fashion_mnist

        (x, _), _ = load_fashion_mnist(use_tfds=False)
        x = x[:n]
    else:
        raise CalibrationDataError(
            f"Unknown calibration source {source!r}; use 'npy:PATH' (a .npy array of preprocessed "
            "inputs), 'fashion_mnist', or 'random' (smoke tests only)."
        )
    if x.ndim != len(shape) + 1 or any(d is not None and d != s for d, s in zip(shape, x.shape[1:])):
        raise CalibrationDataError(
            f"Calibration inputs of shape {x.shape} do not fit the model input {tuple(input_shape)}."
        )
    if len(x) == 0:
        raise CalibrationDataError(f"Calibration source {source!r} holds no examples.")
    return x
