"""Predicting with a recipe's result: its final model, or the average of its final models.

A recipe folder (``recipe.json`` inside) names its result: the final model in ``final/``,
or, when the recipe trained more final models and their average validated better
(:mod:`cnnlab.recipe.steps.ensemble`), the average of ``final/``, ``final-2/``, ...
Each model is used as its run tested it: with flip test-time augmentation when the run
chose it on validation (``summary.json``'s ``tta``). :func:`load_recipe_predictor` gives a
:class:`~cnnlab.infer.predict.Predictor` for it, so ``cnnlab predict RECIPE FILES`` classifies
with what the recipe's test accuracy measured, and ``cnnlab eval RECIPE`` measures it again.
recipe.json is read as plain JSON: inference does not depend on the recipe code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.infer.predict import Predictor, load_predictor
from cnnlab.run import tta_used
from cnnlab.runfolder import RunFolder

RECIPE_FILE = "recipe.json"
# What must agree between the averaged models: they see the same inputs and name the same outputs.
_SAME_DATA = ("classes", "image_shape", "mean", "std")


class AveragedModel(nn.Module):
    """Several classifiers as one: the log of their averaged class probabilities.

    Each model's logits are divided by its own temperature (1 when not calibrated) before
    its softmax; a model marked in ``flips`` gives the mean of its probabilities for the
    image and its mirror image (flip TTA, as ``cnnlab.train.loop.evaluate`` computes it).
    The output is a log-probability, so a softmax of it gives the averaged probabilities
    back, as the softmax of a single model's logits gives its own.
    """

    def __init__(self, models: list[nn.Module], temperatures: list[float], flips: list[bool] | None = None) -> None:
        super().__init__()
        flips = [False] * len(models) if flips is None else list(flips)
        if not models or not len(models) == len(temperatures) == len(flips):
            raise ValueError("an averaged model needs one temperature (and flip choice) per model, and at least one model")
        self.members = nn.ModuleList(models)
        self.temperatures = list(temperatures)
        self.flips = flips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([_probs(model, x, t, flip) for model, t, flip in zip(self.members, self.temperatures, self.flips)])
        return probs.mean(0).clamp_min(1e-12).log()


def _probs(model: nn.Module, x: torch.Tensor, temperature: float, flip: bool) -> torch.Tensor:
    """One model's class probabilities for ``x``; with ``flip``, averaged with its mirror image's."""
    probs = (model(x).float() / temperature).softmax(1)
    return (probs + (model(x.flip(3)).float() / temperature).softmax(1)) / 2 if flip else probs


def is_recipe_folder(path: str | Path) -> bool:
    """Whether ``path`` is a recipe's folder (it holds ``recipe.json``)."""
    return (Path(path).expanduser() / RECIPE_FILE).is_file()


def recipe_models(path: str | Path) -> list[Path]:
    """The run folders whose models are the recipe's result (one, or the averaged ones).

    Raises:
        CnnlabError: recipe.json is unreadable, or the recipe has no final model yet.
    """
    folder = Path(path).expanduser()
    try:
        steps = json.loads((folder / RECIPE_FILE).read_text()).get("steps", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise CnnlabError(f"{folder / RECIPE_FILE} does not read ({exc}); predict with a run folder inside it instead") from None
    ensemble = steps.get("ensemble") or {}
    if ensemble.get("used"):
        # By name inside this folder: the recipe may have been moved since it recorded its paths.
        return [folder / Path(m["run_dir"]).name for m in ensemble["members"]]
    if "final" not in steps:
        raise CnnlabError(f"the recipe in {folder} has no final model yet; continue it with `cnnlab recipe --resume {folder}`")
    return [folder / "final"]


def load_recipe_predictor(path: str | Path, *, device: str = "auto", calibrated: bool = True) -> Predictor:
    """A predictor for a recipe's result: its final model, or its final models averaged.

    Args:
        path: the recipe folder.
        device, calibrated: as :func:`~cnnlab.infer.predict.load_predictor` takes them, for each model.

    Raises:
        CnnlabError: no final model yet, a model missing or unreadable, or models that were
            trained on different data (classes, image shape or normalisation).
    """
    runs = recipe_models(path)
    predictors = [load_predictor(run, device=device, calibrated=calibrated) for run in runs]
    flips = [_tested_with_flips(run) for run in runs]
    first = predictors[0]
    for other in predictors[1:]:
        differ = [k for k in _SAME_DATA if other.data.get(k) != first.data.get(k)]
        if differ:
            raise CnnlabError(f"{other.path} and {first.path} were trained on different data ({', '.join(differ)}); "
                              "they cannot be averaged: predict with one of them")  # fmt: skip
    if len(predictors) == 1 and not flips[0]:
        return first
    model = AveragedModel([p.model for p in predictors], [p.temperature for p in predictors], flips).eval()
    # The first model's description stands for all (same data, same configuration but the seed);
    # the models come from the recipe's record of its result. Each one's temperature is inside.
    return dataclasses.replace(first, model=model, path=Path(path).expanduser() / RECIPE_FILE,
                               temperature=1.0, temperature_from=None)  # fmt: skip


def describe_result(pred: Predictor) -> str:
    """What a recipe's predictor is, after the model's name: ``" x3 averaged, flip TTA"``, or ``""`` for one plain model."""
    if not isinstance(pred.model, AveragedModel):
        return ""
    n, flips = len(pred.model.members), sum(pred.model.flips)
    tta = "" if not flips else ", flip TTA" if flips == n else f", flip TTA for {flips} of them"
    return f"{f' x{n} averaged' if n > 1 else ''}{tta}"


def _tested_with_flips(run: Path) -> bool:
    """Whether the run's test evaluation used flip TTA (its ``summary.json``; False before it finished)."""
    return tta_used(RunFolder(run).read_summary() or {})
