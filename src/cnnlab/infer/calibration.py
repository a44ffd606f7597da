"""Calibration: does a model's confidence match its accuracy, and one temperature that makes it so.

A classifier is calibrated when, of the images it gives 80% confidence, 80% are right.
Networks trained with cross-entropy are usually over-confident (Guo et al. 2017, "On
Calibration of Modern Neural Networks"). Three things here:

- :func:`expected_calibration_error` (ECE): the images binned by confidence (the top
  probability) into 15 equal-width bins over [0, 1]; ECE is the mean over bins of
  ``|accuracy - mean confidence|``, weighted by the fraction of images in the bin
  (Naeini et al. 2015, as used by Guo et al.);
- :func:`fit_temperature`: temperature scaling, one scalar ``T`` that divides every logit,
  fitted on the *validation* split by minimising the negative log-likelihood with LBFGS
  over ``log T`` (so ``T`` stays positive). Dividing by ``T > 0`` keeps the order of the
  logits, so the argmax and the accuracy do not change; only the probabilities do;
- the temperature stored with the model (:func:`store_temperature`): ``RUN/calibration.json``
  names the model file it was fitted for (``best.pt``) and holds that file's SHA-256, so
  ``cnnlab predict`` uses it for that exact file only (:func:`stored_temperature`; a
  retrained file is not fooled by an old temperature). `cnnlab eval` writes it with the
  run's default evaluation only, like ``eval.json``. Deleting the file, or
  ``predict --no-calibration``, ignores it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_write_json
from cnnlab.report.plots import pyplot, save_figure

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017
CALIBRATION_FILE = "calibration.json"  # next to the model file: {"model": "best.pt", "sha256": ..., "temperature": T, ...}
# T is kept within these bounds: a validation split the model gets entirely right drives the
# fitted T towards 0 (every probability to 1) without end; such a T is refused as a fit.
T_MIN, T_MAX = 0.05, 20.0


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin counts, mean confidence and accuracy (the data of a reliability diagram).

    Attributes:
        edges: the ``bins + 1`` bin edges over [0, 1]; bin ``b`` holds ``edges[b] < conf <= edges[b+1]``.
        counts: images per bin.
        confidence: mean top probability of each bin (NaN for an empty bin).
        accuracy: fraction correct in each bin (NaN for an empty bin).
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean of ``|accuracy - confidence|``."""
        n = int(self.counts.sum())
        if n == 0:
            return float("nan")
        full = self.counts > 0
        return float((self.counts[full] * np.abs(self.accuracy[full] - self.confidence[full])).sum() / n)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> ReliabilityBins:
    """Bin the images by their top probability (equal-width bins, right edge included).

    Args:
        probs: (N, classes) probabilities.
        labels: (N,) true classes.
        bins: the number of bins.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    conf = probs.max(1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(1) == labels).astype(np.float64) if len(probs) else np.zeros(0)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # (lo, hi]: a confidence of exactly 1 falls in the last bin; no top probability is 0.
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=conf, minlength=bins) / counts
        accuracy = np.bincount(index, weights=correct, minlength=bins) / counts
    return ReliabilityBins(edges, counts, confidence, accuracy)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of probabilities against labels, with ``bins`` equal-width bins (see the module docstring)."""
    return reliability_bins(probs, labels, bins).ece


def softmax(logits: np.ndarray | torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """float64 softmax of ``logits / temperature``, as numpy."""
    t = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return (t / temperature).softmax(1).numpy()


def nll(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (cross-entropy) of ``logits / temperature``."""
    t = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return float(F.cross_entropy(t / temperature, y))


def fit_temperature(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *, max_iter: int = 50) -> float:
    """The temperature ``T`` that minimises the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    LBFGS (strong Wolfe line search) on ``log T``, starting from ``T = 1``, in float64;
    the result is clipped to [:data:`T_MIN`, :data:`T_MAX`].

    Args:
        logits: (N, classes) logits of the validation split (log-probabilities work too).
        labels: (N,) true classes.
        max_iter: LBFGS iterations (one variable: it converges in a handful).

    Raises:
        CnnlabError: no images, or logits that are not finite.
    """
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if x.ndim != 2 or len(x) == 0 or len(x) != len(y):
        raise CnnlabError(f"fitting a temperature needs (N, classes) logits and N labels, N > 0; got {tuple(x.shape)} and {tuple(y.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise CnnlabError("the model's outputs on the validation split are not finite (NaN/inf); no temperature can be fitted")
    if bool((x.argmax(1) == y).all()):
        # Every image right: the NLL falls towards 0 as T does, without a minimum (LBFGS just
        # stops where the slope is below its tolerance); that is the lower bound.
        return T_MIN
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may be inside no_grad (evaluation)
        opt.step(closure)
    t = float(log_t.detach().exp())
    return min(max(t, T_MIN), T_MAX) if math.isfinite(t) else 1.0


@dataclass(frozen=True)
class Calibration:
    """How calibrated a model is on the evaluated split, before and after temperature scaling.

    Attributes:
        before: the reliability bins of the model's own probabilities.
        nll_before: their mean NLL.
        temperature: the fitted ``T`` (None when none was fitted: no validation split, other data).
        fitted_on: what ``T`` was fitted on, in words (``"val split, 120 images"``).
        after: the bins of ``softmax(logits / T)`` on the evaluated split (None without ``T``).
        nll_after: their mean NLL.
        at_bound: ``T`` hit :data:`T_MIN` or :data:`T_MAX` (the fit did not settle).
    """

    before: ReliabilityBins
    nll_before: float
    temperature: float | None = None
    fitted_on: str | None = None
    after: ReliabilityBins | None = None
    nll_after: float | None = None
    at_bound: bool = False

    @property
    def ece_before(self) -> float:
        return self.before.ece

    @property
    def ece_after(self) -> float | None:
        return None if self.after is None else self.after.ece

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``eval.json``."""
        return {"bins": len(self.before.counts), "ece": self.ece_before, "nll": self.nll_before,
                "temperature": self.temperature, "fitted_on": self.fitted_on, "ece_after": self.ece_after,
                "nll_after": self.nll_after, "temperature_at_bound": self.at_bound}  # fmt: skip


def calibrate(logits: np.ndarray, labels: np.ndarray, fit_logits: np.ndarray | None = None,
              fit_labels: np.ndarray | None = None, *, fitted_on: str | None = None) -> Calibration:  # fmt: skip
    """Measure calibration on ``logits``; with ``fit_logits``, fit ``T`` on them and measure again.

    Args:
        logits, labels: the evaluated split.
        fit_logits, fit_labels: the split ``T`` is fitted on (the validation split), or None.
        fitted_on: that split, in words, for the report.
    """
    before = reliability_bins(softmax(logits), labels)
    if fit_logits is None or fit_labels is None or len(fit_labels) == 0:
        return Calibration(before, nll(logits, labels))
    t = fit_temperature(fit_logits, fit_labels)
    after = reliability_bins(softmax(logits, t), labels)
    return Calibration(before, nll(logits, labels), t, fitted_on, after, nll(logits, labels, t), t in (T_MIN, T_MAX))


def reliability_diagram(cal: Calibration, path: str | Path, *, title: str | None = None) -> Path:
    """Save the reliability diagram: accuracy against confidence per bin, before and after ``T``.

    Bars are the accuracy of each bin; the diagonal is perfect calibration; the gap between
    a bar and the diagonal is that bin's miscalibration (below: over-confident).
    """
    plt = pyplot()
    panels = [("model's probabilities", cal.before, cal.ece_before)]
    if cal.after is not None:
        panels.append((f"divided by T = {cal.temperature:.3g}", cal.after, cal.ece_after))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False, dpi=100)
    for ax, (name, bins, ece) in zip(axes[0], panels):
        width = bins.edges[1] - bins.edges[0]
        mids = bins.edges[:-1] + width / 2
        full = bins.counts > 0
        ax.bar(mids[full], bins.accuracy[full], width=width, edgecolor="black", color="tab:blue", label="accuracy")
        gap = bins.confidence[full] - bins.accuracy[full]
        ax.bar(mids[full], gap, bottom=bins.accuracy[full], width=width, color="tab:red", alpha=0.35,
               edgecolor="tab:red", label="gap to confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}\nECE {ece:.2%} ({len(bins.counts)} bins, n={int(bins.counts.sum())})", fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- stored with the model


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file (which model file a stored temperature belongs to)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def calibration_path(model_file: str | Path) -> Path:
    """Where a temperature for ``model_file`` is stored: ``calibration.json`` in its folder."""
    return Path(model_file).parent / CALIBRATION_FILE


def store_temperature(model_file: str | Path, temperature: float, **info: Any) -> Path:
    """Write ``calibration.json`` next to ``model_file``: its name, SHA-256 and ``temperature``.

    ``info`` (what it was fitted on, the ECE before and after) is stored alongside, for
    people reading the file. An earlier ``calibration.json`` is replaced.

    Raises:
        OSError: the folder is not writable (the caller decides whether that matters).
    """
    model_file = Path(model_file)
    path = calibration_path(model_file)
    atomic_write_json(path, {"model": model_file.name, "sha256": file_digest(model_file),
                             "temperature": float(temperature), **info})  # fmt: skip
    return path


def stored_temperature(model_file: str | Path) -> tuple[float | None, str | None]:
    """The temperature stored for ``model_file``, and why a stored one does not apply to it.

    Returns:
        ``(T, None)`` when the ``calibration.json`` next to the file is for this exact file
        (same name and SHA-256); ``(None, None)`` when there is none, or it is for another
        file of the folder; ``(None, reason)`` when it is for an earlier version of this
        file (retrained since), which is not used.

    Raises:
        CnnlabError: ``calibration.json`` exists but is not readable, or its temperature is
            not a positive number; the message names the file and the fix.
    """
    model_file = Path(model_file)
    path = calibration_path(model_file)
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        raise CnnlabError(f"{path} is not readable JSON ({str(exc)[:120]}); delete it (it only holds the fitted "
                          "temperature; `cnnlab eval` writes it again) or pass --no-calibration") from None  # fmt: skip
    if not isinstance(entry, dict) or entry.get("model") != model_file.name:
        return None, None
    t = entry.get("temperature")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise CnnlabError(f"{path}: the temperature is not a positive number ({str(t)[:40]}); delete the file "
                          "(`cnnlab eval` writes it again) or pass --no-calibration")  # fmt: skip
    if entry.get("sha256") != file_digest(model_file):
        return None, (f"{path} holds a temperature for an earlier {model_file.name} (the file changed since); "
                      "it is not used: run `cnnlab eval` again to fit one for this file")  # fmt: skip
    return float(t), None
