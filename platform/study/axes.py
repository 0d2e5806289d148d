"""The axis names that running a study and answering it share, and what counts as one model size."""
from __future__ import annotations

SEED_AXIS = "seed"
SIZE_AXIS = "model.params"           # a family's size by parameter count
BUDGET_AXIS = "budget.flops"
LR_AXIS = "optim.lr"
PARAM_AXIS = "model.parametrization"
WIDTH_AXES = (SIZE_AXIS, "model.dim")  # a family's size by count, or the width itself
SIZE_TOLERANCE = 0.05  # parameter counts within 5% are one model size


def size_classes(counts: list[int | float]) -> dict[int | float, int | float]:
    """Parameter count -> the smallest count of its size class: sorted counts within SIZE_TOLERANCE of
    the class's first are one size. Knobs such as cosine attention's logit scale or an L2 mixer move a
    count by a little without making a new size; early stopping and the scaling fit treat them alike."""
    classes: dict[int | float, int | float] = {}
    start = None
    for n in sorted(set(counts)):
        if start is None or n > start * (1 + SIZE_TOLERANCE):
            start = n
        classes[n] = start
    return classes
