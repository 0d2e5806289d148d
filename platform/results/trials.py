"""A study's trials as MLflow holds them: params, metrics, the loss curve, tags and the per-image scores of
the last validation, read once for every answer drawn from them."""
from __future__ import annotations

from dataclasses import dataclass, field

from hiir.models import parse_size
from hiir.models.networks import pixel_shuffle_params
from hiir.platform import tracking
from hiir.platform.evaluation.metrics import sr_convention
from hiir.platform.results.noise import TrialScores
from hiir.platform.study.axes import WIDTH_AXES


@dataclass
class Trial:
    """One trial run as MLflow holds it."""

    run_id: str
    name: str
    status: str
    axes: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    curve: tuple[list[int], list[float]]
    synthetic: tuple[str, ...] = ()  # val sets that are synthetic stand-ins (tracking.SYNTHETIC_TAG)
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)  # set -> image -> final headline PSNR
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def n_params(self) -> float | None:
        value = self.params.get("model.num_params")
        return float(value) if value else None

    @property
    def body_params(self) -> float | None:
        """The count a size axis grows: everything but the pixel-shuffle head (`models.networks.
        pixel_shuffle_params`; the input conv counts). None when the trial did not log its resolved model."""
        p, n = self.params, self.n_params
        if n is None:
            return None
        if "resolved_model.scale" not in p:
            return None
        scale = int(p["resolved_model.scale"])
        if scale == 1 or p.get("resolved_model.arch", "columnar") != "columnar":
            return n
        if "resolved_model.dim" not in p or "resolved_model.upsampler_dim" not in p:
            return None
        return n - pixel_shuffle_params(int(p["resolved_model.dim"]), int(p.get("resolved_model.in_channels", 3)),
                                        scale, int(p["resolved_model.upsampler_dim"]))

    @property
    def compute(self) -> float | None:
        flops, steps = self.params.get("flops_per_step"), self.metrics.get("step")
        return float(flops) * steps if flops and steps else None

    @property
    def done(self) -> bool:
        return self.status == "FINISHED" and "val_psnr" in self.metrics

    @property
    def crosses_patches(self) -> bool:
        """False for a model with no path across its P x P patch borders (tree depth 2, linear stage ends), as
        `HiIRConfig.crosses_patches` decided it when the run started."""
        return self.params.get("resolved_model.crosses_patches", "True") != "False"

    @property
    def headline_key(self) -> str:
        """Which PSNR headlines this trial's val sets (`evaluation.metrics.sr_convention`: Y for SR)."""
        return sr_convention(int(self.params.get("resolved_model.scale", 1)),
                             int(self.params.get("resolved_model.in_channels", 3)))[1]

    def set_psnr(self) -> dict[str, float]:
        """Val set -> its headline PSNR."""
        sets = {k.split("/")[1] for k in self.metrics if k.startswith("val/") and k.count("/") == 2}
        return {s: self.metrics.get(f"val/{s}/{self.headline_key}", self.metrics.get(f"val/{s}/psnr")) for s in sets}

    def scores(self) -> TrialScores:
        return TrialScores(self.axes, self.per_image, {} if self.per_image else self.set_psnr())


def collect_trials(tracking_uri: str, parent_run_id: str) -> list[Trial]:
    store = tracking.Store(tracking_uri)
    trials = []
    # Tune numbers its trials in the space's order (..._00000, _00001, ...): the report keeps that order, not
    # the order in which concurrent trials happened to open their runs, except that sizes read smallest
    # first (a sweep runs its largest first, hiir.platform.study.run.param_space).
    runs = sorted(store.children(parent_run_id), key=lambda r: (
        [parse_size(v) for k, v in sorted(tracking.trial_axes(r.data.tags).items()) if k in WIDTH_AXES],
        r.data.tags.get(tracking.TRIAL_TAG, ""), r.info.start_time or 0))
    for run in runs:
        history = store.history(run.info.run_id, "loss")
        tags = run.data.tags
        per_image = store.json_artifact(run.info.run_id, tracking.VAL_IMAGES) if run.info.status == "FINISHED" else None
        trials.append(Trial(run.info.run_id, run.info.run_name or run.info.run_id, run.info.status,
                            tracking.trial_axes(tags), run.data.params, run.data.metrics,
                            ([m.step for m in history], [m.value for m in history]),
                            tuple(s for s in tags.get(tracking.SYNTHETIC_TAG, "").split(",") if s),
                            per_image or {}, dict(tags)))
    return trials
