"""Studies: a YAML spec run as Ray Tune trials, each a `train.fit.fit_run`, and the report read back from MLflow.

    spec     the spec schema, scale blocks and search axes, validated once
    run      `run_study` / `resume_study`: the Tuner, one trainable per trial, closing the MLflow runs
    schedulers  `GroupedASHA`: one ASHA per size and budget, its stop decisions kept for the trial runs' tags
    state    study.json (local and beside Tune's state on shared storage), listing, report lookup
    report   the answer: tables with the paper's numbers, scaling-law fits, plots (from MLflow)
    scaling  the saturating power-law fit L(N) = a N^-alpha + c with bootstrap intervals
    noise    seed noise: mean ± sd per cell over seeds, and each axis's effect paired by seed and val image
    transfer `kind: transfer`: the best LR per width and its drift per width doubling; `--transfer-from`
    plots    PNG plots of a metric against size or compute, training curves, grids of panels

Call graph: `cli study run -> run.run_study -> Tune -> run.run_trial -> train.fit.fit_run`;
`report <- MLflow`.
"""
