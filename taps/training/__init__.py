"""Training around the method: the run settings (``TrainConfig``), the one training loop
(``trainer.train``) for single-task, joint, λ path and budget runs, what differs between those
(task sets in ``tasks``, sparsity schedules in ``sparsity``), the paper's baselines (``methods``),
checkpoints for exact resume, and the events a run emits to whoever listens."""
