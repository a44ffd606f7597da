"""The recipe's steps, one module each, registered in the order they run.

To add a step: write a module with a class implementing :class:`cnnlab.recipe.step.Step`,
and register it below where it should run.
"""

from __future__ import annotations

from cnnlab.recipe.step import StepRegistry
from cnnlab.recipe.steps.check import CheckStep
from cnnlab.recipe.steps.chosen import ChosenStep
from cnnlab.recipe.steps.diagnose import DiagnoseStep
from cnnlab.recipe.steps.ensemble import EnsembleStep, MemberStep
from cnnlab.recipe.steps.final import FinalStep
from cnnlab.recipe.steps.lrfind import LrFindStep
from cnnlab.recipe.steps.overfit import OverfitStep
from cnnlab.recipe.steps.plan import PlanStep
from cnnlab.recipe.steps.search import CoarseStep, RefineStep

RECIPE_STEPS = StepRegistry()
RECIPE_STEPS.register(CheckStep())
RECIPE_STEPS.register(OverfitStep())
RECIPE_STEPS.register(PlanStep())  # before the LR finder: with no search, the finder has nothing to decide
RECIPE_STEPS.register(LrFindStep())
RECIPE_STEPS.register(CoarseStep())
RECIPE_STEPS.register(DiagnoseStep())  # run by each refine round, before it searches
RECIPE_STEPS.register(RefineStep())
RECIPE_STEPS.register(ChosenStep())
RECIPE_STEPS.register(FinalStep())
RECIPE_STEPS.register(MemberStep())  # more final models when the time left is more than one can use
RECIPE_STEPS.register(EnsembleStep())
