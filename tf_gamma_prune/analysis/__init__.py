"""Stage 2, analyse: what a model's channels are and which of them are constant.

* :mod:`.layer_graph` — the flattened call graph (nested models inlined);
* :mod:`.kinds` — each kind of layer's channel rules, in one module per kind;
* :mod:`.channel_graph` — tied channel groups, pinned channels, constants;
* :mod:`.constants` / :mod:`.conv_response` / :mod:`.activations` — the maths of
  constant channels;
* :mod:`.batchnorm` — finding BatchNormalization γ;
* :mod:`.flops` — parameters and multiply-adds;
* :mod:`.latency_table` — predicted latency from per-layer measurements.
"""
