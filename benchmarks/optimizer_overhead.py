"""Step-time overhead of GammaISTA(SGD momentum) over the same SGD alone.

Both optimizers train identical copies of a ResNet-style network (CIFAR ResNet-20)
in one process; timing alternates between them in rounds so that drift of the
machine (other load, thermal) hits both alike. The result is the ratio of median
step times. Target: ≤ 1.05.

    .venv/bin/python benchmarks/optimizer_overhead.py            # writes results JSON
    .venv/bin/python benchmarks/optimizer_overhead.py --rounds=20 --batch_size=128

Duration and output: ``benchmarks/README.md``.
"""

from __future__ import annotations

import json
import os
import statistics
import time

from absl import app, flags

import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 12, "Alternating timing rounds.")
flags.DEFINE_integer("steps_per_round", 10, "Training steps per optimizer per round.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("image_size", 32, "Input height/width.")
common.define_output_flag("optimizer_overhead")

TARGET_RATIO = 1.05


def build_trainer(optimizer_name: str, image_size: int):
    """ResNet-20 (seed 0) compiled with SGD, or with GammaISTA around the same SGD."""
    import keras

    from tf_gamma_prune import GammaISTA, gamma_penalties
    from tf_gamma_prune.reference_models import resnet20

    keras.utils.set_random_seed(0)
    model = resnet20(input_shape=(image_size, image_size, 3))
    sgd = keras.optimizers.SGD(0.05, momentum=0.9)
    optimizer = sgd if optimizer_name == "sgd" else GammaISTA(
        sgd, rho=1e-3, penalties=gamma_penalties(model))
    model.compile(optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def time_steps(model, x, y, steps: int) -> list[float]:
    """Seconds of each of ``steps`` training steps on one batch."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return times


def main(argv):
    del argv
    import numpy as np

    from tf_gamma_prune.atomic_io import write_json_atomic

    rng = np.random.default_rng(0)
    x = rng.normal(size=(FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3)).astype("float32")
    y = rng.integers(0, 10, FLAGS.batch_size)
    models = {name: build_trainer(name, FLAGS.image_size) for name in ("sgd", "gamma_ista")}
    for model in models.values():  # compile the train functions, warm caches
        time_steps(model, x, y, 5)
    samples: dict[str, list[float]] = {name: [] for name in models}
    for r in range(FLAGS.rounds):
        order = list(models) if r % 2 == 0 else list(reversed(list(models)))
        for name in order:
            samples[name].extend(time_steps(models[name], x, y, FLAGS.steps_per_round))
        print(f"round {r + 1}/{FLAGS.rounds}: " + ", ".join(
            f"{n} {1e3 * statistics.median(s):.1f} ms" for n, s in samples.items()), flush=True)
    median = {n: statistics.median(s) for n, s in samples.items()}
    ratio = median["gamma_ista"] / median["sgd"]
    result = {
        "benchmark": "optimizer_overhead",
        "model": "resnet20",
        "settings": {"rounds": FLAGS.rounds, "steps_per_round": FLAGS.steps_per_round,
                     "batch_size": FLAGS.batch_size, "image_size": FLAGS.image_size,
                     "inner_optimizer": "SGD(0.05, momentum=0.9)", "rho": 1e-3,
                     "penalties": "gamma_penalties(model)"},
        "median_step_ms": {n: 1e3 * m for n, m in median.items()},
        "p10_p90_step_ms": {n: [1e3 * float(np.percentile(s, 10)), 1e3 * float(np.percentile(s, 90))]
                            for n, s in samples.items()},
        "ratio_gamma_ista_over_sgd": ratio,
        "target_ratio": TARGET_RATIO,
        "target_met": ratio <= TARGET_RATIO,
        "environment": {**common.machine_info("python", "tensorflow", "keras", "machine"),
                        "cpus": os.cpu_count()},
    }
    write_json_atomic(FLAGS.output, result)
    print(json.dumps({k: result[k] for k in ("median_step_ms", "ratio_gamma_ista_over_sgd",
                                             "target_met")}, indent=2))


if __name__ == "__main__":
    app.run(main)
