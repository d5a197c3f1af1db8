"""Can the confidence be believed? Temperature scaling, calibration error, the reject option.

    temperature scaling   one number T fitted on dev (minimum negative log-likelihood of
                          softmax(logits / T), or of the per-label sigmoids for label sets;
                          Guo et al. 2017); argmax and label ranking are unchanged, confidences move
    ECE                   expected calibration error: |accuracy - mean confidence| per confidence bin,
                          weighted by the bin's share of predictions (15 equal-width bins)
    reject option         multi-class only: below a top probability P the answer is the "other" label;
                          `coverage_table` shows, per P, the share of texts answered and their accuracy

The fitted temperature and the reject threshold live in the `Decoder` (utils/task/decoding.py), so the
spec, the export manifest, infer.py, the Python API and the service all apply them without flags.
The functions take the Decoder's `activation` (softmax, or one sigmoid per label for label sets):
the likelihood and what counts as one prediction follow from it. numpy only (the reliability diagram imports matplotlib when drawn).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .decoding import SIGMOID, SOFTMAX, probabilities
from ..errors import UserError, check_text

logger = logging.getLogger(__name__)

ECE_BINS = 15
# Temperatures searched (log scale), then refined around the best: wide enough for a model that is
# 100x over- or under-confident.
T_MIN, T_MAX = 0.01, 100.0
COVERAGE_THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def nll(logits: np.ndarray, gold: np.ndarray, temperature: float = 1.0, activation: str = SOFTMAX) -> float:
    """Mean negative log-likelihood of `gold` (ids, or a multi-hot matrix for the sigmoid activation)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if activation == SIGMOID:
        y = np.asarray(gold, dtype=np.float64)
        # log(1 + exp(-|z|)) + max(z, 0) - y z: BCE without overflow
        return float((np.logaddexp(0, -np.abs(z)) + np.maximum(z, 0) - y * z).mean())
    gold = np.asarray(gold).reshape(-1).astype(np.int64)
    return float(-_log_softmax(z)[np.arange(len(gold)), gold].mean())


def fit_temperature(logits: np.ndarray, gold, activation: str = SOFTMAX) -> float:
    """The T > 0 minimising dev NLL: a log-spaced grid, then golden-section search around the best
    (NLL is unimodal in log T for all practical purposes; no optimiser dependency).

    When the NLL is lowest at an end of [T_MIN, T_MAX], dev.txt does not pin a temperature down
    (a one-line dev set always does this: right, any smaller T is better; wrong, any larger): the
    bound would be a fit of nothing, so T = 1 (uncalibrated) is returned, with a warning saying so."""
    logits = np.asarray(logits, dtype=np.float64)
    if not len(logits):
        logger.warning("--calibrate: dev.txt has no texts to fit a temperature on; the model stays uncalibrated "
                       "(T = 1)")
        return 1.0
    fitted, bound = _minimise_nll(logits, gold, activation)
    if bound is not None:
        what = ("every dev answer is right, so the sharper the better" if bound == T_MIN
                else "the wrong dev answers outweigh the right ones, so the flatter the better")
        logger.warning("--calibrate: the temperature that fits dev.txt best is the bound of its search range, T = %g "
                       "(%s): %d dev text%s cannot pin a temperature down, and T = %g would be a fit of nothing. The "
                       "model stays uncalibrated (T = 1); calibrate on a larger dev.txt with right and wrong answers",
                       bound, what, len(logits), "" if len(logits) == 1 else "s", bound)
        return 1.0
    return fitted


def _minimise_nll(logits: np.ndarray, gold, activation: str) -> Tuple[float, Optional[float]]:
    """`(T, bound)`: the T of least NLL, and T_MIN or T_MAX when the grid's least NLL is at that end
    (first of equal values: all right answers reach NLL 0 at every small T), else None."""
    grid = np.exp(np.linspace(np.log(T_MIN), np.log(T_MAX), 81))
    losses = [nll(logits, gold, t, activation) for t in grid]
    best = int(np.argmin(losses))
    bound = T_MIN if best == 0 else T_MAX if best == len(grid) - 1 else None
    lo, hi = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (np.sqrt(5) - 1) / 2
    f = lambda log_t: nll(logits, gold, float(np.exp(log_t)), activation)  # noqa: E731
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return float(np.exp((lo + hi) / 2)), bound


def confidences_and_hits(probs: np.ndarray, gold, activation: str = SOFTMAX):
    """`(confidence, correct)` per prediction: the top probability and whether it is the gold label
    (softmax), or every (text, label) probability and whether the label is gold (one sigmoid each)."""
    probs = np.asarray(probs, dtype=np.float64)
    if activation == SIGMOID:
        return probs.reshape(-1), (np.asarray(gold) > 0.5).reshape(-1).astype(np.float64)
    gold = np.asarray(gold).reshape(-1)
    return probs.max(axis=1), (probs.argmax(axis=1) == gold).astype(np.float64)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> List[Dict]:
    """Per equal-width confidence bin: count, mean confidence, accuracy (empty bins omitted)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        chosen = index == b
        if chosen.any():
            out.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(chosen.sum()),
                        "confidence": float(confidence[chosen].mean()), "accuracy": float(correct[chosen].mean())})
    return out


def expected_calibration_error(probs: np.ndarray, gold, activation: str = SOFTMAX, bins: int = ECE_BINS) -> float:
    confidence, correct = confidences_and_hits(probs, gold, activation)
    if not len(confidence):
        return 0.0
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(confidence, correct, bins)) / len(confidence))


def calibration_report(logits: np.ndarray, gold, temperature: float, activation: str = SOFTMAX) -> Dict[str, float]:
    """ECE and NLL at T = 1 and at `temperature` (what eval_results.json records)."""
    out = {"ece": expected_calibration_error(probabilities(logits, temperature, activation), gold, activation),
           "nll": nll(logits, gold, temperature, activation), "temperature": float(temperature)}
    if temperature != 1.0:
        out["ece_uncalibrated"] = expected_calibration_error(probabilities(logits, 1.0, activation), gold,
                                                             activation)
        out["nll_uncalibrated"] = nll(logits, gold, 1.0, activation)
    return out


def coverage_table(probs: np.ndarray, gold: Sequence[int], thresholds: Sequence[float] = COVERAGE_THRESHOLDS,
                   chosen: Optional[float] = None) -> List[Dict]:
    """Per reject threshold P: texts answered (top probability >= P), coverage (their share) and
    accuracy among them (None when none is answered). `chosen` is added to the rows if missing."""
    probs = np.asarray(probs, dtype=np.float64)
    gold = np.asarray(gold).reshape(-1)
    top, hit = probs.max(axis=1), probs.argmax(axis=1) == gold
    values = sorted(set(float(t) for t in thresholds) | ({float(chosen)} if chosen is not None else set()))
    rows = []
    for p in values:
        kept = top >= p
        n = int(kept.sum())
        rows.append({"threshold": p, "answered": n, "coverage": n / len(top) if len(top) else 0.0,
                     "accuracy": float(hit[kept].mean()) if n else None})
    return rows


def format_coverage_table(rows: List[Dict]) -> str:
    """The table as TSV (threshold, answered, coverage, accuracy)."""
    lines = ["threshold\tanswered\tcoverage\taccuracy"]
    for r in rows:
        accuracy = "" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        lines.append(f"{r['threshold']:.2f}\t{r['answered']}\t{r['coverage']:.4f}\t{accuracy}")
    return "\n".join(lines) + "\n"


def plot_reliability(path: str, logits: np.ndarray, gold, temperature: float, activation: str = SOFTMAX,
                     title: str = "") -> None:
    """The reliability diagram (accuracy per confidence bin against the diagonal), before and
    after temperature scaling, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_path

    curves = [("T = 1", 1.0)] + ([(f"T = {temperature:.3g}", temperature)] if temperature != 1.0 else [])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for name, t in curves:
        probs = probabilities(logits, t, activation)
        confidence, correct = confidences_and_hits(probs, gold, activation)
        bins = reliability_bins(confidence, correct)
        ece = expected_calibration_error(probs, gold, activation)
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-",
                label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("share of labels that are gold" if activation == SIGMOID else "accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title or "reliability diagram")
    ax.legend(loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# -- the reject option's arguments (train.py, infer.py, the Python API) -------------------------------


def check_reject_options(reject_threshold, other_label, flag_prefix: str = "") -> None:
    """The reject option's arguments, before any model loads."""
    if reject_threshold is not None and (isinstance(reject_threshold, bool) or not isinstance(
            reject_threshold, (int, float)) or not 0 < reject_threshold <= 1):
        raise UserError(f"must be a number in (0, 1], got {reject_threshold!r}", flag_prefix + "reject_threshold")
    if other_label is not None and (not isinstance(other_label, str) or not other_label.strip()
                                    or any(c in other_label for c in "\t\n,")):
        raise UserError(f"must be a non-empty name without tabs, newlines or commas, got {other_label!r}",
                        flag_prefix + "other_label")
    if other_label is not None:
        check_text(other_label, flag_prefix + "other_label")


def decoder_with_reject(decoder, reject_threshold: Optional[float], other_label: Optional[str],
                        flag_prefix: str = ""):
    """The export's decoder with a reject option given at inference (None: the export's own)."""
    if reject_threshold is None and other_label is None:
        return decoder
    if decoder.multi_label:
        raise UserError(f"is for multi-class models; this {decoder.task_type} model already predicts no label when "
                        "none is above its threshold (raise the thresholds instead)",
                        flag_prefix + ("reject_threshold" if reject_threshold is not None else "other_label"))
    if reject_threshold is None and decoder.reject_threshold is None:
        raise UserError("names what a reject threshold outputs, and neither the export nor this run has one: give "
                        f"{flag_prefix}reject_threshold too", flag_prefix + "other_label")
    if other_label is not None and other_label in decoder.labels:
        raise UserError(f"{other_label!r} is one of the model's labels; a rejected text needs a name of its own",
                        flag_prefix + "other_label")
    return decoder.with_reject(reject_threshold if reject_threshold is not None else decoder.reject_threshold,
                               other_label)
