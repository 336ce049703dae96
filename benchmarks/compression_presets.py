"""Every preset of the compression benchmark: its settings, as plain data.

Two protocols (``settings["protocol"]``), described in full in the module
docstrings named here:

* ``from_reference`` (``compression_reference_protocol.py``): every method
  starts from a trained reference; presets ``cpu`` (full data, the committed
  reference ``saved_models/fashion_vgg_reference.keras``, 5 epochs after it),
  ``cpu_long`` (the same with 12 epochs, core methods only) and ``smoke`` (tiny,
  a reference trained inside the benchmark: what the tests run end to end);
* ``from_scratch`` (``compression_protocol.py``): every method trains from a
  fresh initialisation with the same epoch budget; presets ``gpu`` (the device
  machine) and ``cpu_short`` (the old ``cpu`` preset, verbatim: the committed
  ``benchmarks/results/compression_cpu_short.json`` was made with it).

``compression.py``'s flags override single settings; ``make_settings``
validates the result.

The from_reference presets' ``training_methods`` (the seed papers'
training-time sparsifiers, issue 18) and their knobs (``TRAINING_METHOD_SETTINGS``)
are *additive*: a results file made before them, or with fewer of them, is
continued with the new rows appended (``compression_reference_protocol.
continued_settings``), and ``compression_protocol.settings_hash`` leaves them
out, so the cache folder of a configuration stays the same when they are added.
"""

from __future__ import annotations

from typing import Any

FROM_SCRATCH, FROM_REFERENCE = "from_scratch", "from_reference"

# The training-time sparsifiers of the from_reference protocol and the settings of each
# (see the values in _CPU). Rows are run in the order of ``training_methods``, after the
# criteria rows; the cache file names of a method carry a digest of its settings.
TRAINING_METHOD_SETTINGS: dict[str, tuple[str, ...]] = {
    "receding_importance": ("rni_strength", "rni_shift", "rni_bn_lr_multiplier",
                            "rni_start_scale"),
    "admm": ("admm_rho", "admm_rho_growth", "admm_updates"),
    "coarse_ranking": (),
    "gamma_ista_tiled": ("tile_round_to",),
    "l1_norm_tiled": ("tile_round_to",),
}
# Training methods that are a variant of a core method: they run with that method's chosen
# tuning trial (the others with l1_norm's fine-tuning) and meet the MAC budget themselves
# instead of matching gamma_ista's MACs.
TUNED_LIKE = {"gamma_ista_tiled": "gamma_ista", "l1_norm_tiled": "l1_norm"}
# Of those, the ones without a sparsify phase: like l1_norm, S + F fine-tune epochs.
FINETUNE_ONLY = ("l1_norm_tiled",)
# Left out of settings_hash; a results file may lack them (it is then continued with them).
ADDITIVE_SETTINGS = ("training_methods",
                     *(key for keys in TRAINING_METHOD_SETTINGS.values() for key in keys))

_CPU_SHORT: dict[str, Any] = {
    "protocol": FROM_SCRATCH,
    "train_examples": 8000,
    "test_examples": 0,
    "widths": [32, 32, 64, 64, 128, 128],
    "epochs": 4,
    "sparsify_epochs": 3,
    "stage_epochs": [],
    "rho_stages": [0.09, 0.18],
    "seeds": [0, 1],
    "batch_size": 128,
    "learning_rate": 0.05,
    "finetune_learning_rate": 0.01,
    "momentum": 0.9,
    "penalties": "paper",
    "slimming_l1": 0.022,
    "augment": "pad_crop_flip",
    "match_tolerance": 0.05,
    "fold": "auto",
    "carrier_tile": 8,
    "latency_runs": 100,
    "latency_warmup": 10,
    "latency_timing": "interleaved",  # what its committed results used
    "tflite_eval_examples": 2000,
    "calibration_examples": 200,
}

_GPU: dict[str, Any] = {
    **_CPU_SHORT,
    "train_examples": 0,
    "widths": [64, 64, 128, 128, 256, 256],
    "epochs": 40,
    "sparsify_epochs": 24,
    "rho_stages": [0.001, 0.002, 0.004],
    "seeds": [0, 1, 2],
    "slimming_l1": 0.00076,
    "latency_runs": 200,
    "latency_warmup": 20,
    "latency_timing": "steady",
    "tflite_eval_examples": 10000,
}

# Tuning: the same number of trials for every pruning method, each method's own knob.
_CPU_TUNING = {
    # gamma_ista: the split of the 5 epochs (validation pilots: S=2 93.36 %, S=1 93.48 %)
    "gamma_ista": [{"sparsify_epochs": 2}, {"sparsify_epochs": 1}],
    "slimming": [{"slimming_l1": 0.002}, {"slimming_l1": 0.008}],
    "l1_norm": [{"finetune_learning_rate": 0.01}, {"finetune_learning_rate": 0.03}],
    "random": [{"finetune_learning_rate": 0.01}, {"finetune_learning_rate": 0.03}],
    "scratch": [],
}

_CPU: dict[str, Any] = {
    "protocol": FROM_REFERENCE,
    "reference": "saved_models/fashion_vgg_reference.keras",
    "reference_epochs": 0,           # > 0 (with reference null): train one here instead
    "train_examples": 0,             # 0: all 55,000 left after the validation hold-out
    "validation_examples": 5000,
    "validation_seed": 0,
    "test_examples": 0,
    "widths": [32, 32, 64, 64, 128, 128],
    "sparsify_epochs": 2,            # S
    "finetune_epochs": 3,            # F; methods without a sparsify phase fine-tune S + F
    "scratch_epochs": 0,             # 0: the reference's own epoch count (its JSON record)
    "mac_targets": [3.0, 6.0],
    "seeds": [0, 1],
    "batch_size": 128,
    "momentum": 0.9,
    "sparsify_learning_rate": 0.005,
    "finetune_learning_rate": 0.03,  # better than 0.01 for l1_norm (93.86 vs 93.64 %) and gamma
    "alpha": 1.0,                    # γ–W rescaling before ISTA (1.0: none)
    "min_channels": 4,
    "scale_beta": True,              # pilot: 93.36 vs 92.90 % validation at 3x (S=2)
    "cost_target_every": 50,
    "cost_target_reach_at": 0.6,     # a pilot with 0.75, one window ahead, ended at 2.83x for 3x
    "slimming_l1": 0.004,
    "tuning": _CPU_TUNING,
    "criteria_methods": ["structural_redundancy", "redundancy_random", "prunenet"],
    # The training-time sparsifiers (issue 18), each S epochs from the reference at
    # sparsify_learning_rate, a MAC-matched selection, F fine-tune epochs at l1_norm's tuned
    # rate. Their knobs are fixed from the package's docs/tests (docs/rni_admm.md), never
    # tuned here (no validation trials: the core methods' equal tuning effort stays).
    # l1_norm_tiled: l1_norm's cut moved to widths in tiles (tiled_selection_for_macs), the
    # fair latency comparison for gamma_ista_tiled (docs/evidence.md §10)
    "training_methods": ["receding_importance", "admm", "coarse_ranking", "gamma_ista_tiled",
                         "l1_norm_tiled"],
    # λ, b: the values whose bimodality docs/rni_admm.md measured on fashion_vgg / Fashion-MNIST
    # (benchmarks/importance_histograms.py, test_receding_importance.py); the notes' VGG-16 /
    # CIFAR-10 values (1e-3, b = 3) were made for long training, not 2 epochs. Kept although
    # this phase's SGD rate is 10x below that run's (a quarter-data pilot: no importance
    # reached either tail in 2 epochs): scaling λ would change its weight against the loss.
    "rni_strength": 0.01,
    "rni_shift": 0.0,
    "rni_bn_lr_multiplier": 10.0,    # the recipe: BN parameters at 10x the rate, no decay
    # The reference's γ do not fit sigmoid's (0, 1) (up to 1.6 here): each BN is rescaled
    # (rescale_gamma, the same function) so its largest γ is this, then w = logit(γ).
    # 0.5: the median of the paper's N(0, 1) start, sigmoid's steepest point.
    "rni_start_scale": 0.5,
    # ρ, growth: test_admm.py / docs/rni_admm.md's fashion_vgg run (ρ 0.3 growing 1.3x per
    # update, 12 updates over its 3 epochs: ρ ends at 7); admm_updates keeps those 12 updates
    # whatever the epoch length (update_every = S epochs' steps / 12), since a fixed
    # update_every of 16 would give 53 updates here and ρ ≈ 3e5, far past stability.
    "admm_rho": 0.3,
    "admm_rho_growth": 1.3,
    "admm_updates": 12,
    # gamma_ista_tiled: gamma_ista with CostTarget(round_to=...): XNNPACK's float32 tile on
    # this machine (benchmarks/results/latency_table.json: conv2 4-16 outputs cost the same,
    # 20-32 twice that), so every width is a multiple of it and no tile is paid half-used;
    # l1_norm_tiled: tiled_selection_for_macs(l1_norm_selection, round_to=...), the same tile.
    "tile_round_to": 16,
    "augment": "pad_crop_flip",
    "match_tolerance": 0.05,
    "fold": "auto",
    "carrier_tile": 8,
    "latency_runs": 100,
    "latency_warmup": 10,
    "latency_timing": "steady",
    "tflite_eval_examples": 2000,
    "calibration_examples": 200,
}

# cpu_long: the cpu protocol with 12 epochs after the reference (S = 2 + F = 10) for the core
# methods and the two tiled rows: docs/evidence.md §8 found GammaISTA level with L1-norm at 12 epochs
# (validation, paired) where it was 0.8 point behind at 5. One trial per method, each the cpu
# run's chosen knob (slimming: 0.008 at 3x, 0.002 at 6x there; 0.004 between them), so the
# first seed's records are the tuning (no extra runs). About 4.5 h on 2 idle cores.
_CPU_LONG: dict[str, Any] = {
    **_CPU,
    "finetune_epochs": 10,
    "criteria_methods": [],
    "training_methods": ["gamma_ista_tiled", "l1_norm_tiled"],
    "tuning": {
        "gamma_ista": [{"sparsify_epochs": 2}],
        "slimming": [{"slimming_l1": 0.004}],
        "l1_norm": [{"finetune_learning_rate": 0.01}],
        "random": [{"finetune_learning_rate": 0.01}],
        "scratch": [],
    },
}

_SMOKE: dict[str, Any] = {
    **_CPU,
    "reference": None,
    "reference_epochs": 3,
    "train_examples": 1000,
    "validation_examples": 1000,
    "test_examples": 500,
    "widths": [8, 8, 16, 16, 16, 16],
    "sparsify_epochs": 1,
    "finetune_epochs": 1,
    "mac_targets": [2.0, 4.0],
    "batch_size": 50,
    "alpha": 0.5,                    # exercises rescale → recalibrate → prune → rescale back
    "min_channels": 2,
    "cost_target_every": 2,
    "tile_round_to": 4,              # widths 8-16: a tile of 16 would leave 0 or all
    "tuning": {
        "gamma_ista": [{"sparsify_learning_rate": 0.01}, {"sparsify_learning_rate": 0.03,
                                                          "scale_beta": False}],
        "slimming": [{"slimming_l1": 0.005}, {"slimming_l1": 0.02}],
        "l1_norm": [{"finetune_learning_rate": 0.01}, {"finetune_learning_rate": 0.03}],
        "random": [{"finetune_learning_rate": 0.01}, {"finetune_learning_rate": 0.03}],
        "scratch": [],
    },
    "latency_runs": 3,
    "latency_warmup": 1,
    "tflite_eval_examples": 50,
    "calibration_examples": 10,
}

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": _CPU,
    "cpu_long": _CPU_LONG,
    "smoke": _SMOKE,
    "cpu_short": _CPU_SHORT,
    "gpu": _GPU,
}


def protocol_of(settings: dict) -> str:
    """The protocol of a settings dict; files written before protocols existed are from_scratch."""
    return settings.get("protocol", FROM_SCRATCH)


def migrate_settings(settings: dict | None) -> dict | None:
    """Settings read from a results file, in today's names.

    A file written before presets had a ``protocol`` is ``from_scratch``, and
    its preset ``cpu`` is what is now called ``cpu_short`` (the same settings;
    ``cpu`` is now the from_reference protocol). Everything else is unchanged.
    """
    if settings is None or "protocol" in settings:
        return settings
    out = {**settings, "protocol": FROM_SCRATCH}
    if out.get("preset") == "cpu":
        out["preset"] = "cpu_short"
    return out
