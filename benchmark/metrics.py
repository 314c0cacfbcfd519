"""What each metric means: its name for people, how it is shown, and which way is better.

Defined once here and imported by the leaderboards, the plots, `invbench compare` and
`invbench run`'s score table, so that a number is scaled, labelled and judged the same way
everywhere. Values are stored raw (accuracy as a fraction); ``scale`` turns a raw value into
display units (accuracy in percent). Free of torch: `invbench collect` imports it.

Regression threshold of `invbench compare`: accuracy in percentage points; the error
metrics relative to the baseline's mean (in percent), since they span orders of magnitude
(a test MSE of 16 beside a coefficient error of 0.02).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str  # as stored in metrics.jsonl and baseline CSVs
    title: str  # for people: "accuracy", "MSE"
    scale: float  # raw value x scale = display value (100: a fraction shown in percent)
    unit: str  # of a display value ("%"), or "" for the metric's own units
    higher_is_better: bool | None  # None: a metric nobody declared (no direction known)
    digits: str  # format spec of a display value
    se_digits: str  # format spec of its standard error
    threshold: float  # compare's default: worse by more than this (when significant) regresses
    relative: bool  # threshold in percent of the baseline's mean, else in display units

    def display(self, raw: float) -> float:
        return raw * self.scale

    def format(self, raw: float) -> str:
        return format(raw * self.scale, self.digits)

    @property
    def label(self) -> str:
        """An axis or column label: "accuracy (%)", "MSE"."""
        return f"{self.title} ({self.unit})" if self.unit else self.title

    @property
    def heading(self) -> str:
        """A table heading: the label, and the direction when a smaller number is better."""
        return self.label + (" (lower is better)" if self.higher_is_better is False else "")

    def worse_by(self, change: float) -> float | None:
        """How much worse a change (current - baseline, display units) is; None: no direction."""
        if self.higher_is_better is None:
            return None
        return -change if self.higher_is_better else change

    def threshold_text(self, threshold: float, title: str | None = None) -> str:
        """The threshold in this metric's units; ``title`` names several metrics that share it."""
        title = title or self.title
        if self.relative:
            return f"{threshold:g}% of the baseline's mean {title}"
        if self.unit == "%":
            return f"{threshold:g} percentage point{'' if threshold == 1 else 's'} of {title}"
        return f"{threshold:g} in {title}"


ACCURACY = Metric("acc", "accuracy", 100.0, "%", True, ".1f", ".1f", 1.0, relative=False)
MSE = Metric("mse", "MSE", 1.0, "", False, ".4g", ".2g", 5.0, relative=True)
LOSS = Metric("loss", "loss", 1.0, "", False, ".4g", ".2g", 5.0, relative=True)
# linear_sem's squared errors of the learned coefficients on the causes (truth 1) and on
# the effects (truth 0)
CAUSAL_ERROR = Metric("causal_error", "causal coefficient error", 1.0, "", False, ".4g", ".2g", 5.0, relative=True)
NONCAUSAL_ERROR = Metric("noncausal_error", "non-causal coefficient error", 1.0, "", False, ".4g", ".2g", 5.0,
                         relative=True)

METRICS: dict[str, Metric] = {m.name: m for m in (ACCURACY, MSE, LOSS, CAUSAL_ERROR, NONCAUSAL_ERROR)}

# The metric a task is scored by (selection maximises or minimises it).
SCORE_METRIC = {"binary": ACCURACY.name, "multiclass": ACCURACY.name, "regression": MSE.name}


def metric(name: str) -> Metric:
    """The meaning of ``name``; an undeclared metric (a plugin dataset's extra) is shown raw
    and has no direction, so it is never called better, worse or a regression."""
    known = METRICS.get(name)
    if known is not None:
        return known
    return Metric(name, name, 1.0, "", None, ".4g", ".2g", 5.0, relative=True)


def score_metric(task_kind: str) -> Metric:
    return METRICS[SCORE_METRIC[task_kind]]
