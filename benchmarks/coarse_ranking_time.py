"""Ranking time of CoarseRanking (scores from the training steps' own gradients) vs a separate
Taylor pass.

An iterative prune / fine-tune loop on a small ``fashion_vgg`` (synthetic
28×28 data), two arms side by side in one process from the same weights:

* **free**: fine-tunes ``--steps`` steps per round with
  ``CoarseRanking(SGD(...))`` as the optimizer; the Taylor scores come from
  the γ/β gradients of those steps, no pass of their own;
* **separate**: fine-tunes the same steps with the plain ``SGD(...)``, then
  ranks with a separate Taylor pass over ``--rank_batches`` batches (a
  compiled forward and backward pass per batch, inference mode, gradients of
  γ and β only, the same score).

Both arms then prune with the *free* arm's selection, so they keep training
the same architecture and their fine-tuning times stay comparable (the
separate pass's selection is only compared with it). The fine-tuning runs in
chunks of ``--chunk`` steps alternating between the arms (free, separate,
separate, free, ...), and the cost of the free ranking per step is the median
over the pairs of adjacent chunks of (free − plain) time per step: slow drift
of a shared machine cancels within a pair, and the median ignores the chunks
a burst of other work hit. Each round starts with one warm-up step per arm
(tracing the new model's train step and, for the free arm, building the
optimizer with its channel-graph analysis), reported separately. Times are
taken on two clocks: wall time and the process's CPU time; the CPU time is
far less disturbed by other processes on a shared machine, so it gives the
headline ratio.

    .venv/bin/python benchmarks/coarse_ranking_time.py          # 1 to 1.5 min on 2 shared cores

Writes ``benchmarks/results/coarse_ranking_time.json``:

* ``seconds``: per clock, fine-tuning (steady state) and warm-up per arm, and
  the separate pass (its probe build and tracing included);
* ``per_round_ms``: the plain step, the free ranking's cost per step
  (median paired difference) and the interquartile range of the paired
  differences (how far the measurement can resolve), per clock;
* ``ranking_overhead_ratio``: the free ranking's CPU time (cost per step ×
  steps, summed over rounds) over the separate pass's CPU time: 0 is free,
  and the noise makes it scatter around 0; ``..._with_warmup`` adds the
  warm-up difference; ``..._wall`` and ``..._wall_from_sums`` (plain sums of
  the chunk times) are the same on wall time, far noisier on a shared machine;
* ``isolated_update_ms``: the score update's extra operations timed alone
  (a compiled loop, least of 5 timings, on the unpruned model), and
  ``ranking_overhead_ratio_isolated``: that × the fine-tuning steps / the
  separate pass's wall time (little noise; in the training step these
  operations can also overlap with others);
* ``total_time_ratio``: free arm / separate arm, whole loop, wall time;
* ``max_weight_difference``: largest |w_free − w_separate| before each prune.
  The ranking does not change the updates, but its extra consumers of the
  γ/β gradients make TensorFlow schedule and fuse the step differently, and
  the rounding differences that follow grow over training (we saw 2e-6 after
  30 steps with inter-op parallelism 1, and bitwise equality when every step
  is its own ``fit`` call);
* ``kept_channels_shared``: per round, kept channels the free and the separate
  selections have in common (the free scores use training-mode
  BatchNormalization on the fine-tuning batches, the separate pass inference
  mode on its own batches).
"""

from __future__ import annotations

import json
import time

from absl import app, flags

import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 3, "Prune / fine-tune rounds.")
flags.DEFINE_integer("steps", 60, "Timed fine-tuning steps per round.")
flags.DEFINE_integer("chunk", 10, "Fine-tuning steps per timed fit call (arms alternate).")
flags.DEFINE_integer("rank_batches", 30, "Batches of the separate Taylor pass per round.")
flags.DEFINE_integer("batch_size", 64, "Batch size (training and ranking).")
flags.DEFINE_float("prune_fraction", 0.2, "Fraction of the remaining channels cut per round.")
flags.DEFINE_integer("seed", 0, "Random seed.")
common.define_output_flag("coarse_ranking_time")

WIDTHS = (16, 16, 32, 32, 64, 64)
ARMS = ("free", "separate")


def make_data(n: int, seed: int):
    """Synthetic images whose label is the brightest of four quadrants."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 28, 28, 1)).astype("float32")
    quadrant = rng.integers(0, 4, n)
    for q in range(4):
        rows, cols = divmod(q, 2)
        x[quadrant == q, rows * 14:(rows + 1) * 14, cols * 14:(cols + 1) * 14] += 0.5
    return x, quadrant.astype("int32")


def compiled(model, arm: str):
    import keras

    from tf_gamma_prune import CoarseRanking

    optimizer = keras.optimizers.SGD(0.02, momentum=0.9)
    if arm == "free":
        optimizer = CoarseRanking(optimizer)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def separate_pass(model, x, y):
    """A separate Taylor pass: ``--rank_batches`` batches, the same score as CoarseRanking
    (it accumulates into a probe CoarseRanking, whose selection code it then uses)."""
    import keras
    import tensorflow as tf

    from tf_gamma_prune import CoarseRanking

    probe = CoarseRanking(keras.optimizers.SGD(0.0)).attach(model)
    probe.build(model.trainable_variables)
    params = [v for r in probe._ranking.ranked for v in (r.layer.gamma, r.layer.beta)
              if v is not None]

    @tf.function(jit_compile=bool(model.jit_compile))
    def step(bx, by):
        with tf.GradientTape() as tape:
            logits = model(bx, training=False)
            loss = model.compute_loss(x=bx, y=by, y_pred=logits, training=False)
        probe._accumulate(tape.gradient(loss, params), params)

    b = FLAGS.batch_size
    for i in range(FLAGS.rank_batches):
        j = (i * b) % (len(x) - b)
        step(x[j:j + b], y[j:j + b])
    return probe


def isolated_update_seconds(model, x, y, repeats: int = 50) -> float:
    """Seconds of CoarseRanking's per-step score update alone (its extra ops in a compiled
    function, on one batch's γ/β gradients): the least of 5 timings of ``repeats`` updates."""
    import keras
    import tensorflow as tf

    from tf_gamma_prune import CoarseRanking

    probe = CoarseRanking(keras.optimizers.SGD(0.0)).attach(model)
    probe.build(model.trainable_variables)
    params = [v for r in probe._ranking.ranked for v in (r.layer.gamma, r.layer.beta)
              if v is not None]
    b = FLAGS.batch_size
    with tf.GradientTape() as tape:
        logits = model(x[:b], training=False)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y[:b], logits)
    grads = tape.gradient(loss, params)

    @tf.function
    def updates():
        for _ in tf.range(repeats):  # a loop, not unrolled: no shared subexpressions
            probe._accumulate(grads, params)

    updates()  # trace
    best = float("inf")
    for _ in range(5):
        begin = time.perf_counter()
        updates()
        best = min(best, time.perf_counter() - begin)
    return best / repeats


def fit(model, x, y, start: int, steps: int) -> tuple[float, float]:
    """Fine-tune ``steps`` steps from batch ``start``: (wall, process CPU) seconds."""
    b = FLAGS.batch_size
    take = slice(start * b, (start + steps) * b)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(x[take], y[take], batch_size=b, epochs=1, shuffle=False, verbose=0)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv):
    del argv
    import keras
    import numpy as np

    from tf_gamma_prune import count_macs, prune_model
    from tf_gamma_prune.atomic_io import write_json_atomic
    from tf_gamma_prune.reference_models import fashion_vgg

    keras.utils.set_random_seed(FLAGS.seed)
    per_round = FLAGS.steps + 1  # one warm-up step
    x, y = make_data(FLAGS.rounds * per_round * FLAGS.batch_size, FLAGS.seed)
    base = fashion_vgg(widths=WIDTHS, dropout=0.0)
    update_seconds = isolated_update_seconds(base, x, y)
    models = {}
    for arm in ARMS:
        models[arm] = fashion_vgg(widths=WIDTHS, dropout=0.0)
        models[arm].set_weights(base.get_weights())
        compiled(models[arm], arm)
    clocks = ("wall", "cpu")
    seconds = {c: {"fine_tune": {a: 0.0 for a in ARMS}, "warmup": {a: 0.0 for a in ARMS},
                   "separate_pass": 0.0} for c in clocks}
    overhead = {c: 0.0 for c in clocks}  # Σ_rounds median paired difference × steps
    per_round_ms = []
    shared, weight_diff, ranked = [], [], 0
    for r in range(FLAGS.rounds):
        first = r * per_round
        for arm in ARMS:
            for c, v in zip(clocks, fit(models[arm], x, y, first, 1)):
                seconds[c]["warmup"][arm] += v
        order, done = list(ARMS), 0
        chunks = {c: {a: [] for a in ARMS} for c in clocks}  # seconds per step of each chunk
        while done < FLAGS.steps:
            n = min(FLAGS.chunk, FLAGS.steps - done)
            for arm in order:
                for c, v in zip(clocks, fit(models[arm], x, y, first + 1 + done, n)):
                    seconds[c]["fine_tune"][arm] += v
                    chunks[c][arm].append(v / n)
            order.reverse()
            done += n
        # adjacent chunks of the two arms, paired: slow drift of a shared machine cancels,
        # and the median ignores the chunks a burst of other work hit
        paired = {c: np.subtract(chunks[c]["free"], chunks[c]["separate"]) for c in clocks}
        diff = {c: float(np.median(paired[c])) for c in clocks}
        spread = {c: float(np.subtract(*np.percentile(paired[c], [75, 25]))) for c in clocks}
        for c in clocks:
            overhead[c] += diff[c] * FLAGS.steps
        per_round_ms.append({
            "plain_step_wall": round(1000 * float(np.median(chunks["wall"]["separate"])), 2),
            "plain_step_cpu": round(1000 * float(np.median(chunks["cpu"]["separate"])), 2),
            "ranking_per_step_wall": round(1000 * diff["wall"], 2),
            "ranking_per_step_cpu": round(1000 * diff["cpu"], 2),
            "paired_difference_iqr_wall": round(1000 * spread["wall"], 2),
            "paired_difference_iqr_cpu": round(1000 * spread["cpu"], 2)})
        weight_diff.append(max(float(np.max(np.abs(a - b))) for a, b in zip(
            models["free"].get_weights(), models["separate"].get_weights())))
        wall, cpu = time.perf_counter(), time.process_time()
        probe = separate_pass(models["separate"], x, y)
        seconds["wall"]["separate_pass"] += time.perf_counter() - wall
        seconds["cpu"]["separate_pass"] += time.process_time() - cpu
        separate_selection = probe.selection(FLAGS.prune_fraction)
        ranking = models["free"].optimizer
        ranked += ranking.batches
        selection = ranking.selection(FLAGS.prune_fraction)
        common_kept = sum(len(np.intersect1d(selection[k], separate_selection[k]))
                          for k in selection)
        shared.append(f"{common_kept}/{sum(len(v) for v in selection.values())}")
        for arm in ARMS:
            models[arm] = compiled(prune_model(models[arm], selection, probe=False), arm)
        print(f"round {r + 1}/{FLAGS.rounds}: {per_round_ms[-1]}, separate pass "
              f"{seconds['wall']['separate_pass']:.2f} s so far", flush=True)
    wall, cpu = seconds["wall"], seconds["cpu"]
    passed = wall["separate_pass"]
    sums = wall["fine_tune"]["free"] - wall["fine_tune"]["separate"]
    warm = cpu["warmup"]["free"] - cpu["warmup"]["separate"]
    total_free = wall["fine_tune"]["free"] + wall["warmup"]["free"]
    total_separate = wall["fine_tune"]["separate"] + wall["warmup"]["separate"] + passed
    result = {
        "benchmark": "coarse_ranking_time",
        "model": f"fashion_vgg(widths={list(WIDTHS)}), synthetic 28x28 data",
        "settings": {"rounds": FLAGS.rounds, "steps_per_round": FLAGS.steps,
                     "chunk": FLAGS.chunk, "rank_batches": FLAGS.rank_batches,
                     "batch_size": FLAGS.batch_size, "prune_fraction": FLAGS.prune_fraction,
                     "seed": FLAGS.seed, "optimizer": "SGD(0.02, momentum=0.9)"},
        "ranked_batches": {"free": ranked, "separate": FLAGS.rounds * FLAGS.rank_batches},
        "seconds": {c: {"fine_tune": {k: round(v, 3) for k, v in s["fine_tune"].items()},
                        "warmup": {k: round(v, 3) for k, v in s["warmup"].items()},
                        "separate_pass": round(s["separate_pass"], 3)}
                    for c, s in seconds.items()},
        "per_round_ms": per_round_ms,
        "ranking_overhead_ratio": round(overhead["cpu"] / cpu["separate_pass"], 4),
        "ranking_overhead_ratio_with_warmup": round(
            (overhead["cpu"] + warm) / cpu["separate_pass"], 4),
        "ranking_overhead_ratio_wall": round(overhead["wall"] / passed, 4),
        "ranking_overhead_ratio_wall_from_sums": round(sums / passed, 4),
        "isolated_update_ms": round(1000 * update_seconds, 4),
        "ranking_overhead_ratio_isolated": round(
            update_seconds * FLAGS.rounds * FLAGS.steps / passed, 4),
        "total_time_ratio": round(total_free / total_separate, 4),
        "max_weight_difference": [float(f"{d:.3g}") for d in weight_diff],
        "kept_channels_shared": shared,
        "final_macs": int(count_macs(models["free"])),
        "environment": common.machine_info("python", "tensorflow", "keras", "machine",
                                           "cpu_count"),
    }
    write_json_atomic(FLAGS.output, result)
    print(json.dumps({k: v for k, v in result.items()
                      if k not in ("settings", "environment", "model")}, indent=1))


if __name__ == "__main__":
    app.run(main)
