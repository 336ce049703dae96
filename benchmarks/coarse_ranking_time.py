"""Ranking time of CoarseRanking (scores gathered during fine-tuning) vs a separate Taylor pass.

An iterative prune / fine-tune loop on a small ``fashion_vgg`` (synthetic
28×28 data), run twice side by side in one process from the same weights:

* **separate**: each round fine-tunes ``--steps`` steps, then ranks channels
  with a separate Taylor (activation × gradient) pass over ``--rank_batches``
  batches, then prunes ``--prune_fraction`` of the channels;
* **coarse**: each round fine-tunes the same steps with a
  :class:`~tf_gamma_prune.CoarseRanking` callback that ranks one batch every
  ``--interval`` steps, then prunes from its scores (no separate pass).

Both arms use the same per-batch Taylor computation (``CoarseRanking.update``),
so the saving comes from ranking fewer batches, spread over fine-tuning:
roughly ``1 − (steps / interval) / rank_batches`` by construction; the run
measures what it is in wall time, with the callback's overhead included.
The arms alternate round by round so that drift of the machine hits both.

    .venv/bin/python benchmarks/coarse_ranking_time.py          # ~30 s on 2 cores

Writes ``benchmarks/results/coarse_ranking_time.json``: seconds per phase and
arm, ``ranking_time_saved`` (1 − coarse ranking time / separate ranking time),
``total_time_ratio`` (coarse / separate, whole loop), and how many kept
channels the two arms' first-round selections share (how close the coarse
ranking is to the separate one; later rounds start from different models).
"""

from __future__ import annotations

import json
import time

from absl import app, flags

import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 3, "Prune / fine-tune rounds.")
flags.DEFINE_integer("steps", 60, "Fine-tuning steps per round.")
flags.DEFINE_integer("interval", 10, "CoarseRanking ranks one batch every this many steps.")
flags.DEFINE_integer("rank_batches", 30, "Batches of the separate Taylor pass per round.")
flags.DEFINE_integer("batch_size", 64, "Batch size (training and ranking).")
flags.DEFINE_float("prune_fraction", 0.2, "Fraction of the remaining channels cut per round.")
flags.DEFINE_integer("seed", 0, "Random seed.")
common.define_output_flag("coarse_ranking_time")

WIDTHS = (16, 16, 32, 32, 64, 64)


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


def compiled(model):
    import keras

    model.compile(keras.optimizers.SGD(0.02, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def one_round(arm: str, model, x, y, offset: int):
    """Fine-tune, rank, prune; returns (pruned model, seconds by phase, selection)."""
    from tf_gamma_prune import CoarseRanking, prune_model

    b, steps = FLAGS.batch_size, FLAGS.steps
    take = slice(offset, offset + steps * b)
    seconds = {}
    if arm == "coarse":
        ranking = CoarseRanking(data=(x, y), interval=FLAGS.interval, batch_size=b)
        start = time.perf_counter()
        model.fit(x[take], y[take], batch_size=b, epochs=1, shuffle=False, verbose=0,
                  callbacks=[ranking])
        fit = time.perf_counter() - start
        seconds["ranking"] = ranking.ranking_seconds
        seconds["fine_tune"] = fit - ranking.ranking_seconds
    else:
        start = time.perf_counter()
        model.fit(x[take], y[take], batch_size=b, epochs=1, shuffle=False, verbose=0)
        seconds["fine_tune"] = time.perf_counter() - start
        ranking = CoarseRanking()
        ranking.set_model(model)
        start = time.perf_counter()
        for i in range(FLAGS.rank_batches):
            j = (i * b) % (len(x) - b)
            ranking.update(x[j:j + b], y[j:j + b])
        seconds["ranking"] = time.perf_counter() - start
    selection = ranking.selection(FLAGS.prune_fraction)
    start = time.perf_counter()
    pruned = compiled(prune_model(model, selection, probe=False))
    seconds["prune"] = time.perf_counter() - start
    return pruned, seconds, selection


def main(argv):
    del argv
    import keras
    import numpy as np

    from tf_gamma_prune import count_macs
    from tf_gamma_prune.atomic_io import write_json_atomic
    from tf_gamma_prune.reference_models import fashion_vgg

    keras.utils.set_random_seed(FLAGS.seed)
    n = FLAGS.rounds * FLAGS.steps * FLAGS.batch_size
    x, y = make_data(n, FLAGS.seed)
    base = fashion_vgg(widths=WIDTHS, dropout=0.0)
    weights = base.get_weights()
    models = {}
    for arm in ("separate", "coarse"):
        models[arm] = compiled(fashion_vgg(widths=WIDTHS, dropout=0.0))
        models[arm].set_weights(weights)
        models[arm].fit(x[:4 * FLAGS.batch_size], y[:4 * FLAGS.batch_size],
                        batch_size=FLAGS.batch_size, verbose=0)  # build the train function
        models[arm].set_weights(weights)
    seconds = {arm: {"fine_tune": 0.0, "ranking": 0.0, "prune": 0.0} for arm in models}
    first_selection = {}
    for r in range(FLAGS.rounds):
        order = ["separate", "coarse"] if r % 2 == 0 else ["coarse", "separate"]
        for arm in order:
            models[arm], spent, selection = one_round(
                arm, models[arm], x, y, r * FLAGS.steps * FLAGS.batch_size)
            first_selection.setdefault(arm, selection)
            for phase, s in spent.items():
                seconds[arm][phase] += s
        print(f"round {r + 1}/{FLAGS.rounds}: " + ", ".join(
            f"{arm} ranking {seconds[arm]['ranking']:.2f} s" for arm in models), flush=True)
    totals = {arm: sum(s.values()) for arm, s in seconds.items()}
    saved = 1.0 - seconds["coarse"]["ranking"] / seconds["separate"]["ranking"]
    shared = sum(len(np.intersect1d(first_selection["separate"][k], first_selection["coarse"][k]))
                 for k in first_selection["separate"])
    kept = sum(len(v) for v in first_selection["separate"].values())
    result = {
        "benchmark": "coarse_ranking_time",
        "model": f"fashion_vgg(widths={list(WIDTHS)}), synthetic 28x28 data",
        "settings": {"rounds": FLAGS.rounds, "steps_per_round": FLAGS.steps,
                     "interval": FLAGS.interval, "rank_batches": FLAGS.rank_batches,
                     "batch_size": FLAGS.batch_size, "prune_fraction": FLAGS.prune_fraction,
                     "seed": FLAGS.seed},
        "ranked_batches_per_round": {"separate": FLAGS.rank_batches,
                                     "coarse": FLAGS.steps // FLAGS.interval},
        "seconds": {arm: {k: round(v, 3) for k, v in s.items()} for arm, s in seconds.items()},
        "total_seconds": {arm: round(v, 3) for arm, v in totals.items()},
        "ranking_time_saved": round(saved, 4),
        "total_time_ratio": round(totals["coarse"] / totals["separate"], 4),
        "first_round_kept_channels_shared": f"{shared}/{kept}",
        "final_macs": {arm: int(count_macs(m)) for arm, m in models.items()},
        "environment": common.machine_info("python", "tensorflow", "keras", "machine",
                                           "cpu_count"),
    }
    write_json_atomic(FLAGS.output, result)
    print(json.dumps({k: result[k] for k in ("seconds", "ranking_time_saved", "total_time_ratio",
                                             "first_round_kept_channels_shared")}, indent=2))


if __name__ == "__main__":
    app.run(main)
