"""Running studies: a YAML spec run as Ray Tune trials, each a `train.fit.fit_run`. Answering them (the report,
read back from MLflow) is `hiir.platform.results`, which reads this package; this package never reads that one.

    spec        `StudySpec`: the spec schema, scale blocks and their profiles (studies/profiles/), search axes,
                validated once; `Transferred`, a small study's best values for `--transfer-from`
    run         `run_study` / `resume_study`: the Tuner, one trainable per trial, closing the MLflow runs
    state       `StudyState` (study.json, local and beside Tune's state on shared storage), finding a study, listing
    schedulers  `GroupedASHA`: one ASHA per size and budget, its stop decisions kept for the trial runs' tags
    axes        the axis names running and answering share, and `size_classes` (counts within 5% are one size)

Call graph: `cli study run -> run.run_study -> Tune -> run.run_trial -> train.fit.fit_run`.
"""
