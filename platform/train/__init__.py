"""One training run: pre-start checks, the Ray Train fit, and what runs on every worker.

    runtime     the Ray a run starts or joins, the workers' environment and resources, storage paths
    checks      everything knowable before a worker starts: datasets, storage, placement, size
    fit         `fit_run`: checks -> MLflow run -> TorchTrainer.fit -> exported weights
    worker      `train_loop_per_worker`, the loop every rank runs (nanoGPT-plain)
    engine      DeepSpeed ZeRO 0-3 or DDP behind one small interface
    schedule    warmup, then cosine / multistep / constant
    ema         the EMA of the weights used for validation and export
    checkpoint  per-rank integrity records, so a half-written checkpoint is never used

Call graph: `cli train -> fit.fit_run -> TorchTrainer -> worker.train_loop_per_worker -> engine`.
"""
