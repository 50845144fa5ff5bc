"""The method itself, as the paper states it: gated layers (Eq. 1–2 with the straight-through
gradient), their weight composition, ``adapt`` to wrap any model, the sparsity penalty (Eq. 3),
task packs (only what a task adds), merging for zero-overhead inference, several tasks on one base,
and the statistics of a task. It needs torch and, of this project, only its errors and — to rebuild a
pack's base by name — ``taps.backbones``: no data, no training loop, no files beyond a pack."""
