"""Answering a study: what its finished trials say, read back from MLflow (the source of truth).

    trials    `Trial` and `collect_trials`: every trial run under a study run, read once
    noise     seed noise: mean ± sd per cell over seeds; each axis's levels against its reference, paired by
              seed and val image, with Dunnett's family-wise control and each level's own interval
    scaling   the saturating power-law fit L(N) = a N^-alpha + c with bootstrap intervals (N_BOOT draws)
    sizes     the size axis on size means: the trend with its lack of fit, the law's held-out check against
              naive predictors (5+ sizes), the best size at a compute budget
    analysis  the answer computed once: baseline, effects, size trends and laws, budgets, early stops
    transfer  `kind: transfer`: the best LR per width and its drift per width doubling; `from_study` for
              `hiir study run --transfer-from`
    claims    the paper's directions (`expected.claims`) beside ours: agrees, contradicts, or not resolved
              at this scale, the study's claims judged as one family
    markdown  the answer in words and tables
    plots     PNG plots of a metric against size or compute, training curves, grids of panels
    report    `report_study` / `write_report`: report.md, results.json and plots, logged to the study run
    finish    `finish_study`: what a study's end does, once: register the best trial's model, write the report
    summary   several studies in one table (`hiir study run FOLDER`): state, wall time, claims; a file and a run

`results` reads `study` (the spec, its axes and study.json); `study` never imports `results`: the CLI calls
`finish_study` when a study ends.
"""
