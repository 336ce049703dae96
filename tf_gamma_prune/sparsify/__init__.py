"""Stage 1, train: sparsify BatchNormalization γ so that useless channels reach exactly zero.

* :mod:`.gamma_ista` — :class:`GammaISTA`, the ISTA (soft-threshold) optimizer wrapper;
* :mod:`.wrapper` — what γ-penalising wrappers share (inner optimizer, γ discovery);
* :mod:`.slimming` — :class:`NetworkSlimming`, the L1-subgradient baseline;
* :mod:`.penalties` — the paper's per-layer λ and the γ–W rescaling of pretrained models;
* :mod:`.callbacks` — :class:`SparsityMonitor` (History / TensorBoard);
* :mod:`.cost_target` — :class:`CostTarget`: ρ steered to a MAC budget;
* :mod:`.budget_cuts` — the one-shot cuts to a budget (threshold, end-of-run trim,
  Network Slimming's global threshold) that :class:`CostTarget` makes;
* :mod:`.recalibration` — BN moving statistics re-estimated after pruning;
* :mod:`.resume` — exact mid-epoch resume of an interrupted ``fit``;
* :mod:`.bounded_batchnorm` — :class:`BoundedBatchNormalization` (scale ``sigmoid(w)``)
  and the conversions to and from standard BatchNormalization;
* :mod:`.receding_importance` — the receding-importance regulariser and the
  10x-BN-rate optimizer wrapper of its recipe;
* :mod:`.admm` — :class:`ADMMFilterPruning`, single-shot ADMM towards k filters per layer;
* :mod:`.coarse_ranking` — :class:`CoarseRanking`, an optimizer wrapper that ranks channels by
  Taylor scores from the training steps it sees (its selections are criteria).
"""
