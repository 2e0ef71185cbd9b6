"""`monoscope plan`: memory per rank, store size, time and fit of an SAE run, before it runs;
`check_fits`: the trainer's refusal, up front, of a step that cannot fit its device."""

from monoscope.plan.config import PlanConfig
from monoscope.plan.fit import DoesNotFitError, check_fits, check_gather_fits
from monoscope.plan.report import format_plan
from monoscope.plan.runner import Plan, run

__all__ = [
    "DoesNotFitError",
    "Plan",
    "PlanConfig",
    "check_fits",
    "check_gather_fits",
    "format_plan",
    "run",
]
