"""Answering a study: what its finished trials say, read back from MLflow (the source of truth).

    trials    `Trial` and `collect_trials`: every trial run under a study run, read once
    noise     seed noise: mean ± sd per cell over seeds, and each axis's effect paired by seed and val image
    scaling   the saturating power-law fit L(N) = a N^-alpha + c with bootstrap intervals; the held-out check
    analysis  the answer computed once: baseline, effects, size laws and trends, budgets, early stops
    transfer  `kind: transfer`: the best LR per width and its drift per width doubling; `from_study` for
              `hiir study run --transfer-from`
    markdown  the answer in words and tables
    plots     PNG plots of a metric against size or compute, training curves, grids of panels
    report    `report_study` / `write_report`: report.md, results.json and plots, logged to the study run
    finish    `finish_study`: what a study's end does, once: register the best trial's model, write the report

`results` reads `study` (the spec, its axes and study.json); `study` never imports `results`: the CLI calls
`finish_study` when a study ends.
"""
