"""tf-gamma-prune: prune, export and time Keras models for phones.

Usage:
  python -m tf_gamma_prune export IN.keras --tflite OUT.tflite
      [--quantize none|float16|dynamic|int8 --calibration npy:PATH|fashion_mnist|random
       --int8_io --batch_size 1 --parity_samples 32]
  python -m tf_gamma_prune prune IN.keras --out OUT.keras
      [--fold exact|carrier|bias --carrier_tile N --tflite OUT.tflite --quantize ... --calibration ...]
  python -m tf_gamma_prune benchmark A.tflite [B.tflite] [--threads 1,2 --runs 50 --warmup 5
      --timing steady|interleaved --block 10 --json OUT.json]
  python -m tf_gamma_prune sparsify IN.keras --out OUT.keras --data fashion_mnist|npz:PATH
      (--target_macs 1/3 | --target_params 100000 | --rho 0.01)
      [--epochs 2 --learning_rate 0.01 --train_batch_size 128 --train_examples 0
       --min_channels 2 --every 50 --reach_at 0.75 --seed 0 --fold ... --tflite OUT.tflite]

sparsify trains IN.keras with GammaISTA (SGD with momentum 0.9, the paper's
per-layer penalties) and prunes the channels it zeroed. Say the budget, not ρ:
--target_macs / --target_params (a fraction of the model's cost such as 1/3 or
0.25, or an absolute count such as 5000000) let CostTarget steer ρ until the
pruned model meets it; --rho sets a fixed ρ by hand instead.

Models load with Keras safe mode: a file holding Python code (a Lambda layer)
is refused unless you trust it and pass --trust_model (alias --unsafe).
`--calibration random` is for smoke tests only: int8 ranges calibrated on noise
do not fit real data; use npy:PATH with a few hundred preprocessed training
inputs instead.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from tf_gamma_prune.errors import TfGammaPruneError  # noqa: E402

FLAGS = flags.FlagValues()  # the command's own flags: importing this module defines nothing process-wide
flags.DEFINE_string("out", None, "prune: where to write the pruned .keras model.", flag_values=FLAGS)
flags.DEFINE_string("tflite", None, "export/prune: where to write the .tflite model.", flag_values=FLAGS)
flags.DEFINE_enum(
    "fold", "auto", ["auto", "exact", "carrier", "bias"],
    "prune: how removed constant channels are folded. auto (default): exact and never larger (carriers, else keeps the constants); exact: BorderCorrection maps where zero "
    "padding needs them; carrier: exact without extra ops (keeps one constant channel per padded "
    "reader; with --carrier_tile 8 for phones); bias: the paper's plain fold (approximate at "
    "borders).", flag_values=FLAGS,
)
flags.DEFINE_integer(
    "carrier_tile", 1,
    "prune with --fold carrier: keep a carrier channel only where it fits in the last, partly "
    "filled tile of this many output channels (8 for ARM phones, 16 for AVX-512); elsewhere "
    "border maps stay.",
    lower_bound=1, flag_values=FLAGS,
)
flags.DEFINE_enum("quantize", "none", ["none", "float16", "dynamic", "int8"], "TFLite quantization.", flag_values=FLAGS)
flags.DEFINE_string(
    "calibration", None,
    "int8 calibration and parity inputs: npy:PATH, fashion_mnist, or random (smoke tests only).", flag_values=FLAGS,
)
flags.DEFINE_integer("calibration_samples", 200, "Examples used for int8 calibration.", flag_values=FLAGS)
flags.DEFINE_boolean("int8_io", False, "With --quantize int8: int8 input/output tensors.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 1, "Fixed batch size of the exported model; 0 = dynamic.", flag_values=FLAGS)
flags.DEFINE_integer("parity_samples", 32, "Examples for the Keras-vs-TFLite parity check (0 = skip).", flag_values=FLAGS)
flags.DEFINE_boolean("trust_model", False, "Load models with safe_mode=False (allows Lambda layers). "
                     "Only for files you trust: loading runs their Python code.", flag_values=FLAGS)
flags.DEFINE_alias("unsafe", "trust_model", flag_values=FLAGS)
flags.DEFINE_list("threads", ["1", "2"], "benchmark: thread counts.", flag_values=FLAGS)
flags.DEFINE_integer("runs", 50, "benchmark: timed runs per model and thread count.", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 5, "benchmark: untimed runs first.", flag_values=FLAGS)
flags.DEFINE_enum("timing", "steady", ["steady", "interleaved"],
                  "benchmark A B: 'steady' = turns of back-to-back runs (warm caches, as an app running one "
                  "model sees); 'interleaved' = single runs alternate (cold caches).", flag_values=FLAGS)
flags.DEFINE_integer("block", 10, "benchmark A B with --timing steady: timed runs per turn.", flag_values=FLAGS)
flags.DEFINE_string("json", None, "benchmark: also write the results as JSON here.", flag_values=FLAGS)
flags.DEFINE_string("target_macs", None,
                    "sparsify: MAC budget, a fraction of the model's MACs (1/3, 0.25) or a count.", flag_values=FLAGS)
flags.DEFINE_string("target_params", None,
                    "sparsify: parameter budget, a fraction of the model's parameters or a count.", flag_values=FLAGS)
flags.DEFINE_float("rho", None, "sparsify: a fixed ISTA strength ρ instead of a budget.", flag_values=FLAGS)
flags.DEFINE_string("data", None,
                    "sparsify: training data, fashion_mnist or npz:PATH (arrays x and y, "
                    "preprocessed like the model's training inputs; y integer class labels).", flag_values=FLAGS)
flags.DEFINE_integer("epochs", 2, "sparsify: training epochs.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_float("learning_rate", 0.01, "sparsify: SGD learning rate (momentum 0.9).", flag_values=FLAGS)
flags.DEFINE_integer("train_batch_size", 128, "sparsify: training batch size.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("train_examples", 0, "sparsify: use the first N training examples (0 = all).",
                     lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer("min_channels", 2, "sparsify: every layer keeps at least this many channels.",
                     lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer("every", 50, "sparsify with a budget: adapt ρ every this many steps.",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_float("reach_at", 0.75, "sparsify with a budget: fraction of the training at "
                   "which the budget is reached (the rest recovers accuracy).", flag_values=FLAGS)
flags.DEFINE_integer("seed", None, "sparsify: seed the data order and every random op, and make "
                     "TensorFlow's ops deterministic, so that a run can be repeated exactly (a "
                     "little slower). Unset: not repeatable.", flag_values=FLAGS)

COMMANDS = ("export", "prune", "benchmark", "sparsify")


class CliError(TfGammaPruneError):
    """A user-facing failure: printed as one message, exit status 1."""


def _say(line: str) -> None:
    print(line, flush=True)


def load_model(path: str, trust: bool):
    """Load a .keras model in safe mode unless ``trust``; refusals say what to do."""
    from tf_gamma_prune.export import ModelFileError, UnsafeModelError, load_keras_model

    try:
        return load_keras_model(path, trust=trust)
    except UnsafeModelError as e:
        raise CliError(
            f"Refused to load {path} in safe mode: it contains Python code (e.g. a Lambda layer) "
            "that would run when loaded. If you trust this file, pass --trust_model."
        ) from e
    except ModelFileError as e:
        raise CliError(str(e)) from e


class _Outputs:
    """Files a command writes, all at the end: a failing command leaves none behind.

    Each file is written atomically; if a later one fails, the ones this command
    created (that did not exist before) are removed again.
    """

    def __init__(self):
        self.pending: list[tuple[str, object]] = []

    def add(self, path: str, write) -> None:
        self.pending.append((path, write))

    def commit(self) -> None:
        created = []
        try:
            for path, write in self.pending:
                existed = os.path.exists(path)
                write(path)
                if not existed:
                    created.append(path)
                _say(f"wrote {path}")
        except BaseException:
            for path in created:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            raise


def _export(model, path: str, outputs: _Outputs) -> bytes:
    """Convert and check ``model``; the .tflite is written by ``outputs.commit()``."""
    from tf_gamma_prune import export

    quantization = None if FLAGS.quantize == "none" else FLAGS.quantize
    shape = tuple(model.inputs[0].shape)
    inputs = None
    if FLAGS.calibration:
        inputs = export.calibration_inputs(FLAGS.calibration, shape, n=max(FLAGS.calibration_samples, FLAGS.parity_samples))
        if FLAGS.calibration == "random":
            _say("warning: --calibration random is for smoke tests only; int8 ranges will not fit real data")
    elif quantization == "int8":
        raise CliError("--quantize int8 needs --calibration npy:PATH (or fashion_mnist; random for smoke tests).")
    flatbuffer = export.to_tflite(
        model, None, quantization=quantization,
        representative_data=None if inputs is None else [inputs[: FLAGS.calibration_samples]],
        int8_io=FLAGS.int8_io, batch_size=FLAGS.batch_size or None,
        calibration_samples=FLAGS.calibration_samples,
    )
    _say(f"converted ({len(flatbuffer):,} bytes, quantization={FLAGS.quantize})")
    _say("ops: " + ", ".join(f"{k}×{v}" for k, v in export.op_counts(flatbuffer).items()))
    if FLAGS.parity_samples > 0:
        if inputs is None:
            inputs = export.calibration_inputs("random", shape, n=FLAGS.parity_samples)
        report = export.check_parity(model, flatbuffer, inputs[: FLAGS.parity_samples])
        top1 = "" if report.top1_agreement is None else f", top-1 agreement {report.top1_agreement:.1%}"
        _say(f"parity on {report.n} inputs: max abs {report.max_abs:.3g}, max rel {report.max_rel:.3g}{top1}")
        if quantization is None:
            report.assert_within(1e-4)
    _say(export.gpu_compatibility(flatbuffer).summary())
    outputs.add(path, lambda p: export.write_atomic(p, flatbuffer))
    return flatbuffer


def cmd_export(args: list[str]) -> None:
    if len(args) != 1 or not FLAGS.tflite:
        raise app.UsageError("export IN.keras --tflite OUT.tflite [--quantize ...]")
    outputs = _Outputs()
    _export(load_model(args[0], FLAGS.trust_model), FLAGS.tflite, outputs)
    outputs.commit()


def cmd_prune(args: list[str]) -> None:
    if len(args) != 1 or not FLAGS.out:
        raise app.UsageError("prune IN.keras --out OUT.keras [--tflite OUT.tflite ...]")
    try:
        from tf_gamma_prune.prune.prune_model import prune_model
    except ImportError as e:
        raise CliError(f"Pruning is not available in this installation ({e}).") from e
    from tf_gamma_prune.atomic_io import save_keras_atomic

    if not FLAGS.out.endswith(".keras"):
        raise CliError(f"--out must name a .keras file, got {FLAGS.out}")
    model = load_model(args[0], FLAGS.trust_model)
    pruned, report = prune_model(model, fold=FLAGS.fold, carrier_tile=FLAGS.carrier_tile,
                                 return_report=True)
    _say(report.summary())
    outputs = _Outputs()
    outputs.add(FLAGS.out, lambda p: save_keras_atomic(pruned, p))
    if FLAGS.tflite:
        _export(pruned, FLAGS.tflite, outputs)
    outputs.commit()


def parse_budget(text: str, flag: str) -> float | int:
    """``"1/3"`` or ``"0.25"`` → a fraction; ``"5000000"`` or ``"5e6"`` → an absolute count.

    >>> parse_budget("1/3", "--target_macs"), parse_budget("2e5", "--target_params")
    (0.3333333333333333, 200000)
    """
    try:
        if "/" in text:
            numerator, denominator = text.split("/")
            value = float(numerator) / float(denominator)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError) as e:
        raise CliError(f"{flag} takes a fraction (1/3, 0.25) or a count (5000000), got {text!r}.") from e
    if 0 < value < 1:
        return value
    if value >= 1 and float(value).is_integer():
        return int(value)
    raise CliError(f"{flag}={text}: give a fraction in (0, 1) such as 1/3, or a whole count "
                   "above 1 such as 5000000.")


def _training_data(spec: str, n: int):
    """``(x, y)`` from --data."""
    import numpy as np

    if spec == "fashion_mnist":
        from tf_gamma_prune.data import load_fashion_mnist

        (x, y), _ = load_fashion_mnist(use_tfds=False)
    elif spec.startswith("npz:"):
        try:
            with np.load(spec[4:], allow_pickle=False) as arrays:
                x, y = arrays["x"], arrays["y"]
        except (OSError, ValueError, KeyError) as e:
            raise CliError(f"Cannot read training data {spec[4:]!r} (an .npz with arrays x and y "
                           f"is needed): {e}") from e
    else:
        raise CliError(f"--data takes fashion_mnist or npz:PATH, got {spec!r}.")
    if len(x) != len(y):
        raise CliError(f"--data {spec}: {len(x)} inputs but {len(y)} labels.")
    return (x[:n], y[:n]) if n else (x, y)


def cmd_sparsify(args: list[str]) -> None:
    if len(args) != 1 or not FLAGS.out or not FLAGS.data:
        raise app.UsageError("sparsify IN.keras --out OUT.keras --data fashion_mnist|npz:PATH "
                             "(--target_macs 1/3 | --target_params N | --rho R)")
    chosen = [f for f in ("target_macs", "target_params", "rho") if FLAGS[f].value is not None]
    if len(chosen) != 1:
        raise CliError("sparsify needs exactly one of --target_macs, --target_params (a budget) "
                       f"and --rho (a fixed strength); got {', '.join('--' + c for c in chosen) or 'none'}.")
    if not FLAGS.out.endswith(".keras"):
        raise CliError(f"--out must name a .keras file, got {FLAGS.out}")
    import keras

    from tf_gamma_prune import CostTarget, GammaISTA, count_macs, gamma_penalties, prune_model
    from tf_gamma_prune.atomic_io import save_keras_atomic

    if FLAGS.seed is not None:
        _repeatable(FLAGS.seed)
    target = None
    if chosen[0] != "rho":
        budget = parse_budget(FLAGS[chosen[0]].value, "--" + chosen[0])
        metric = "macs" if chosen[0] == "target_macs" else "params"
        target = CostTarget(**{metric: budget}, every=FLAGS.every, reach_at=FLAGS.reach_at,
                            fold=FLAGS.fold, carrier_tile=FLAGS.carrier_tile)
    model = load_model(args[0], FLAGS.trust_model)
    x, y = _training_data(FLAGS.data, FLAGS.train_examples)
    softmax = getattr(model.layers[-1], "activation", None) is keras.activations.softmax
    loss = (keras.losses.SparseCategoricalCrossentropy if getattr(y, "ndim", 1) == 1
            else keras.losses.CategoricalCrossentropy)(from_logits=not softmax)
    rho = FLAGS.rho if target is None else 1e-3  # with a budget: CostTarget sets ρ
    model.compile(GammaISTA(keras.optimizers.SGD(FLAGS.learning_rate, momentum=0.9), rho=rho,
                            penalties=gamma_penalties(model), min_channels=FLAGS.min_channels),
                  loss=loss, metrics=["accuracy"])

    def report(epoch, logs):
        extra = "" if target is None else (f", rho {logs['rho']:.4g}, cost "
                                           f"{logs[f'pruned_{target.metric}_fraction']:.1%} of the start")
        _say(f"epoch {epoch + 1}/{FLAGS.epochs}: loss {logs['loss']:.4f}, "
             f"accuracy {logs['accuracy']:.4f}{extra}")

    callbacks = [keras.callbacks.LambdaCallback(on_epoch_end=report)]
    model.fit(x, y, batch_size=FLAGS.train_batch_size, epochs=FLAGS.epochs, verbose=0,
              callbacks=([target] if target else []) + callbacks)
    if target is not None:
        _say("rho: " + " ".join(f"{h['step']}:{h['rho']:.3g}" for h in target.history))
    pruned, prune_report = prune_model(model, fold=FLAGS.fold, carrier_tile=FLAGS.carrier_tile,
                                       return_report=True)
    _say(prune_report.summary())
    if target is not None:
        cost = count_macs(pruned) if target.metric == "macs" else pruned.count_params()
        _say(f"budget {target.budget:,} {target.metric}: the pruned model has {cost:,} "
             f"({cost / target.budget - 1:+.1%})")
    outputs = _Outputs()
    outputs.add(FLAGS.out, lambda p: save_keras_atomic(pruned, p))
    if FLAGS.tflite:
        _export(pruned, FLAGS.tflite, outputs)
    outputs.commit()


def _repeatable(seed: int) -> None:
    """Seed Python, NumPy and the backend, and (TensorFlow) make every op deterministic: this
    process is a command-line run, so changing process-wide settings is its to do."""
    import keras

    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def cmd_benchmark(args: list[str]) -> None:
    from tf_gamma_prune import export

    if len(args) not in (1, 2):
        raise app.UsageError("benchmark A.tflite [B.tflite] [--threads 1,2 --runs 50]")
    try:
        threads = [int(t) for t in FLAGS.threads]
    except ValueError as e:
        raise app.UsageError(f"--threads takes integers like 1,2 (got {FLAGS.threads})") from e
    results: dict = {"models": args, "runs": FLAGS.runs, "warmup": FLAGS.warmup, "threads": {}}
    if len(args) == 2:
        results.update(timing=FLAGS.timing, block=FLAGS.block)
    if len(args) == 1:
        for n in threads:
            r = export.benchmark_latency(args[0], num_threads=n, warmup=FLAGS.warmup, runs=FLAGS.runs)
            _say(f"threads={n}: median {r.median_ms:.3f} ms (p10 {r.p10_ms:.3f}, p90 {r.p90_ms:.3f})")
            results["threads"][n] = {"a": _latency_dict(r)}
    else:
        comparisons = export.compare_latency(
            args[0], args[1], threads=threads, warmup=FLAGS.warmup, runs=FLAGS.runs,
            timing=FLAGS.timing, block=FLAGS.block,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
        _say(f"{'threads':>7} {'A median ms':>12} {'B median ms':>12} {'speed-up A/B':>13}")
        for c in comparisons:
            _say(f"{c.num_threads:>7} {c.a.median_ms:>12.3f} {c.b.median_ms:>12.3f} {c.speedup:>12.2f}x")
            results["threads"][c.num_threads] = {
                "a": _latency_dict(c.a), "b": _latency_dict(c.b), "speedup": c.speedup,
            }
    if FLAGS.json:
        export.write_atomic(FLAGS.json, (json.dumps(results, indent=2) + "\n").encode())
        _say(f"wrote {FLAGS.json}")


def _latency_dict(r) -> dict:
    return {"median_ms": r.median_ms, "p10_ms": r.p10_ms, "p90_ms": r.p90_ms, "runs": r.runs}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"Give a command: one of {', '.join(COMMANDS)}.")
    FLAGS.mark_as_parsed()  # run() parsed them through absl's process-wide FLAGS
    if "verbosity" not in flags.FLAGS or not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TF's SavedModel chatter is not for users
    command = {"export": cmd_export, "prune": cmd_prune, "benchmark": cmd_benchmark,
               "sparsify": cmd_sparsify}[argv[1]]
    try:
        command(argv[2:])
    except _user_errors() as e:  # typed library errors explain themselves: no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that describe bad input or environment, not a bug in this package:
    every typed error of the package, and OSError (unwritable output paths)."""
    return (TfGammaPruneError, OSError)


def run() -> None:
    """Console entry point (``tf-gamma-prune``, ``python -m tf_gamma_prune``)."""
    main_module = sys.modules.get("__main__")
    if main_module is not None and not getattr(main_module, "__doc__", None):
        main_module.__doc__ = __doc__  # absl prints it for --help and usage errors
    if "target_macs" not in flags.FLAGS:  # this process is the command: absl parses its flags
        flags.FLAGS.append_flag_values(FLAGS)
        for flag in FLAGS.get_key_flags_for_module(__name__):  # --help lists them as the program's own
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main)
