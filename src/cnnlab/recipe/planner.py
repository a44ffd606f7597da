"""The budget planner: how much of a recipe's time goes to the search and how many epochs the final model gets.

A pure function of measurements, :func:`plan_budget`, so every decision can be tested on
constructed inputs and read back in the report. The inputs are measured, never assumed
from one dataset:

- the budget and the time already spent (seconds);
- the seconds one epoch of the *final* configuration takes on the *full* training split
  (timed on a few real steps of that model: the search trials' speed on a subset says
  little about a larger model on all the data);
- the seconds one epoch of a search trial takes (from the trials, or a timed step).

The rules:

1. the plan never spends more than the budget left: the ``+5 %`` of the budget contract is
   a margin for the estimate's error, never planned into;
2. **the final model first.** The final model is what the user gets, and its accuracy grows
   with its epochs until it saturates, while a search can only pay back the epochs it takes
   from it when its pick beats the prior configuration by more than those epochs are worth.
   Measured on Fashion-MNIST (docs/benchmarks.md), two search trials' time taken from a
   5-10 minute final run cost more accuracy than any search pick gained. So the final
   model gets every whole epoch the time left allows, up to ``max_epochs`` (where more
   epochs of the same model stop paying: ``SATURATION_EPOCHS``); only the time beyond
   that goes to the search;
3. when fewer than ``min_trials`` coarse trials fit in the search's time, a search cannot
   choose between anything, so it is skipped and the final model trains the prior
   configuration (the recipe's starting config, known to train);
4. **time beyond the saturation epochs buys more final models, not more search.** Their
   predictions are averaged (an ensemble: members of one configuration trained from
   different seeds), which lowers the error more than epochs past saturation do and,
   unlike a pick among short trials, cannot favour a configuration that only looks good
   early (short trials prefer little regularisation: on Fashion-MNIST at 30 minutes the
   search picked a tenth of the prior's weight decay, and the final model trained with it
   validated 0.4 points below the prior trained as long).
   ``n = ceil(affordable / saturation)`` members share the time equally, so each still
   trains at least half the saturation epochs; at most ``max_members`` (an ensemble's gain
   shrinks as 1/n); only time beyond ``max_members`` saturated members goes to a search;
5. when not one final epoch fits, the plan says so with ``final_epochs = 0`` instead of
   planning an overrun.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cnnlab.errors import CnnlabError

# Epochs after which more epochs of the same model are not worth a search's time: the final
# model is planned up to this many, and only the time beyond them goes to the search.
SATURATION_EPOCHS = 30
# A coarse stage needs at least this many trials to compare anything: with fewer, the
# search's pick is noise (the 5-minute run fitted one trial, at 29 % accuracy).
MIN_TRIALS = 4
# Final models averaged at most (rule 4): an ensemble's variance term falls as 1/n, so a fourth
# member adds a third of what the second did, and the time is better spent searching.
MAX_MEMBERS = 3


def most_members(ensemble: int | None) -> int:
    """The most final models a recipe trains once its configuration is fixed: ``--ensemble N``, else ``2 x MAX_MEMBERS``.

    ``MAX_MEMBERS`` bounds the *plan*, so that time beyond it is left to a search; after the
    search the configuration is fixed and nothing else can use the time, so a pace faster
    than the plan read buys more models, up to this many (each gains less than the last).
    """
    return ensemble or 2 * MAX_MEMBERS


@dataclass(frozen=True)
class Plan:
    """How the time left is split, and why.

    Attributes:
        budget_seconds: the whole budget.
        elapsed_seconds: spent before the plan was made.
        search_seconds: what the search may still use (0 when skipped or already done).
        final_epochs: epochs of each final model (0: not one epoch fits in the time left).
        final_seconds: what the final models are expected to take, fixed costs included.
        final_epoch_seconds: the measured seconds per final epoch the plan used.
        fixed_seconds: the final run's one-off seconds the plan counted (test evaluation).
        skip_search: the search is skipped; the final model trains the best prior configuration.
        reasons: one line per decision, for the report.
        members: final models trained one after the other and averaged (1: a single model).
    """

    budget_seconds: float
    elapsed_seconds: float
    search_seconds: float
    final_epochs: int
    final_seconds: float
    final_epoch_seconds: float
    fixed_seconds: float
    skip_search: bool
    reasons: tuple[str, ...]
    members: int = 1  # recipes from before ensembles have no such field: one model

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON (``reasons`` as a list)."""
        return {**self.__dict__, "reasons": list(self.reasons)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """The inverse of :meth:`as_dict`."""
        return cls(**{**data, "reasons": tuple(data["reasons"])})


def plan_budget(
    budget_seconds: float,
    elapsed_seconds: float,
    final_epoch_seconds: float,
    trial_epoch_seconds: float | None = None,
    *,
    trial_epochs: int = 2,
    search_done: bool = False,
    fixed_seconds: float = 0.0,
    min_trials: int = MIN_TRIALS,
    max_epochs: int | None = None,
    max_members: int = 1,
) -> Plan:
    """Split the time left between the search and the final model (see the module docstring).

    Args:
        budget_seconds: the recipe's whole budget, in seconds.
        elapsed_seconds: seconds already spent (all sessions together).
        final_epoch_seconds: measured seconds per epoch of the final configuration on the
            full training split (training plus the epoch's validation).
        trial_epoch_seconds: measured seconds per epoch of a search trial; needed unless
            ``search_done``.
        trial_epochs: epochs per coarse trial.
        search_done: the search already ran: everything left goes to the final model.
        fixed_seconds: one-off costs of the final run, not per epoch (the test evaluation,
            building the model), in seconds.
        min_trials: fewer coarse trials than this in the search's time skip the search.
        max_epochs: the final model's saturation epochs: at most this many, and only the time
            beyond them goes to more members and then the search (None: no cap, so no search).
        max_members: final models at most (1: no ensemble).

    Returns:
        The :class:`Plan`.

    Raises:
        CnnlabError: a non-positive or non-finite measurement, or no trial speed for a
            search still to run.
    """
    for name, value in (("budget", budget_seconds), ("seconds per final epoch", final_epoch_seconds)):
        if not (math.isfinite(value) and value > 0):
            raise CnnlabError(f"the budget planner needs a positive {name}, got {value}")
    if not (math.isfinite(elapsed_seconds) and elapsed_seconds >= 0 and fixed_seconds >= 0):
        raise CnnlabError(f"the budget planner needs elapsed and fixed seconds >= 0, got {elapsed_seconds}, {fixed_seconds}")
    if max_members < 1:
        raise CnnlabError(f"the budget planner needs at least one final model, got max_members={max_members}")
    left = max(budget_seconds - elapsed_seconds, 0.0)
    reasons = [f"{left:.0f} s of the {budget_seconds:.0f} s budget left after {elapsed_seconds:.0f} s spent"]
    affordable = int(max(left - fixed_seconds, 0.0) // final_epoch_seconds)  # final epochs if one model got all the time
    cap = max_epochs if max_epochs is not None else affordable
    members, epochs = share_members(left, final_epoch_seconds, fixed_seconds, cap, max_members)
    member_seconds = epochs * final_epoch_seconds + (fixed_seconds if epochs else 0.0)
    search_seconds, skip = 0.0, False
    if not search_done:
        if trial_epoch_seconds is None or not (math.isfinite(trial_epoch_seconds) and trial_epoch_seconds > 0):
            raise CnnlabError(f"the budget planner needs the measured seconds per trial epoch, got {trial_epoch_seconds}")
        # only time beyond max_members saturated models is the search's (less than an epoch each otherwise)
        saturated = epochs == cap and members == max_members and affordable > cap
        spare = left - members * member_seconds if saturated else 0.0
        trial_seconds = trial_epochs * trial_epoch_seconds
        fit = int(max(spare, 0.0) // trial_seconds)
        if fit < min_trials:
            skip = True
            if affordable <= cap:
                why = f"the final model can use all the time left ({affordable} epoch(s) of {final_epoch_seconds:.1f} s fit, saturation at {cap})"
            elif not saturated:
                why = f"the time beyond one model's {cap} saturation epochs goes to {members} averaged final models"
            else:
                why = (f"the {spare:.0f} s beyond {members} final model(s) of {cap} epochs fit {fit} coarse trial(s) of "
                       f"{trial_seconds:.0f} s, fewer than the {min_trials} needed to compare")  # fmt: skip
            reasons.append(f"search skipped: {why}; the final model trains the prior configuration")
        else:
            search_seconds = spare
            reasons.append(f"search: {spare:.0f} s, the time beyond {members} final model(s) of {epochs} epochs "
                           f"(more epochs or models stop paying), about {fit} coarse trials of {trial_seconds:.0f} s")  # fmt: skip
    final_share = left - search_seconds
    final_seconds = members * member_seconds
    if epochs == 0:
        reasons.append(f"final: not one epoch ({final_epoch_seconds:.0f} s measured, + {fixed_seconds:.0f} s fixed) fits "
                       f"in the {final_share:.0f} s left")  # fmt: skip
    else:
        capped = ", capped at the saturation epochs" if max_epochs is not None and epochs == max_epochs < affordable else ""
        each = f"{members} models averaged, each " if members > 1 else ""
        reasons.append(f"final: {each}{epochs} epoch(s) of {final_epoch_seconds:.1f} s (measured on the final model, full "
                       f"training split) + {fixed_seconds:.0f} s fixed = {final_seconds:.0f} s of its {final_share:.0f} s{capped}")  # fmt: skip
        if members > 1:
            reasons.append(f"ensemble: {affordable} epochs fit, more than the {cap} after which one model stops gaining, "
                           f"so {members} models share the time (each at least half the saturation epochs)")  # fmt: skip
    return Plan(float(budget_seconds), float(elapsed_seconds), search_seconds, epochs, final_seconds,
                float(final_epoch_seconds), float(fixed_seconds), skip, tuple(reasons), members)  # fmt: skip


def share_members(left: float, epoch_seconds: float, fixed_seconds: float, cap: int, max_members: int) -> tuple[int, int]:
    """How many final models, and how many epochs each, the time left allows (rule 4).

    ``ceil(affordable / cap)`` models (at most ``max_members``), fewer while each would get
    less than half of ``cap`` once every model's fixed seconds are paid.

    Returns:
        ``(members, epochs)``; ``epochs`` is 0 when not one epoch fits.
    """
    affordable = int(max(left - fixed_seconds, 0.0) // epoch_seconds)
    if cap <= 0 or affordable <= cap:
        return 1, min(affordable, max(cap, 0))
    members = min(max_members, math.ceil(affordable / cap))
    while members > 1:
        epochs = int(max(left - members * fixed_seconds, 0.0) // (members * epoch_seconds))
        if epochs >= math.ceil(cap / 2):
            return members, min(epochs, cap)
        members -= 1
    return 1, cap
