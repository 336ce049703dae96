"""Stage 3, prune: decide which channels go and rebuild a narrower model.

* :mod:`.plan` — :func:`plan_removal`: the channel groups removed (constants,
  a selection, rounding, carriers);
* :mod:`.criteria` — which channels to select (|γ| threshold, L1-norm, random)
  and :func:`selection_for_macs` for a MAC budget;
* :mod:`.width_alignment` / :mod:`.tiled_selection` — widths moved to multiples
  of a tile within a budget; :func:`tiled_selection_for_macs`, any criterion
  to a MAC budget in tiles;
* :mod:`.prune_model` — :func:`prune_model`, the user action;
* :mod:`.rebuild` / :mod:`.folding` — the rebuild engine and where removed
  channels' values go (biases, BN means, border maps, carriers);
* :mod:`.calibration` — mean activations for removed non-constant channels;
* :mod:`.report` — :class:`PruneReport`.
"""
