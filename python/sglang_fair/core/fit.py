"""Fitting the iteration cost model: a robust, non-negative least-squares fit and an online refitter.

`fit_cost_model(samples)` fits `CostModel` to measured iterations `(prefills [(chunk, prefix)], decode_contexts,
measured_s)`:

- the regression rows are `CostModel.features` (base, prefill tokens, chunk x (prefix + chunk), decode rows,
  decode context tokens); coefficients are non-negative (scipy.optimize.nnls on column-scaled rows);
- by default residuals are relative (each row divided by its measured time), so a 20 ms decode step counts as much
  as a 2 s prefill and the fit minimises percentage error, the unit the scheduler's budget cares about;
- robust: iteratively reweighted, first Huber (convex, gives a sane start) then Tukey's bisquare, whose weight is 0
  beyond 4.685 robust standard deviations, so a GC pause or a 10x sample has no pull at all on the result;
- terms the data cannot identify (a column that is zero, or collinear with the others) are not fitted, and with
  `drop_unsupported` a term whose removal does not worsen the fit by BIC is dropped as well (typically the
  quadratic term when chunks are short); an unfitted term keeps the prior's value (0 without a prior).

`OnlineCostFitter` refines a prior from the live engine's measured iterations: a ring buffer of the last
`window_samples` rows, a refit every `refit_every` observations with exponential forgetting (weight halves every
`half_life_samples` observations), so after a regime change the new regime holds the majority of the weight within
about one half-life and the bisquare weights then reject the old samples. It never returns a degenerate model: until
`min_samples` rows exist, or when a refit is ill-conditioned or implausible, it keeps the previous model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
from scipy.optimize import nnls

from .cost_model import FEATURES, CostModel

_HUBER_K = 1.345
_BISQUARE_C = 4.685
_MAD_TO_SIGMA = 1.4826


class IterationSample(NamedTuple):
    """One measured iteration. A plain 3-tuple in this order works too."""

    prefills: Sequence[tuple[int, int]]
    """(chunk tokens, prefix tokens already in KV) per prefill in the batch."""
    decode_contexts: Sequence[int]
    """KV context length of each decode row."""
    measured_s: float


@dataclass(frozen=True, slots=True)
class FitOptions:
    relative: bool = True
    """Minimise relative (percentage) residuals instead of absolute seconds."""
    robust: bool = True
    """Huber then bisquare reweighting; False gives plain (weighted) non-negative least squares."""
    drop_unsupported: bool = True
    """Drop (fix at the prior's value) terms whose removal does not worsen the fit by BIC."""
    terms: tuple[str, ...] = FEATURES
    """Terms allowed to be fitted; the others are fixed at the prior's value (0 without a prior)."""
    min_rel_singular: float = 1e-7
    """A term is identifiable only if it raises the rank of the unit-column design by at least this singular value."""
    min_scale: float = 1e-3
    """Floor of the robust residual scale, relative (x median measured time when not `relative`): keeps noise-free
    data stable."""
    max_iter: int = 30
    min_term_weight: float = 0.0
    """A term is fitted only if the samples that exercise it (its feature > 0) carry at least this much sample weight
    (a weight-1 sample counts 1); otherwise it keeps the prior's value. 0: no minimum. The online fitter sets it
    (OnlineFitConfig): a few old samples must not decide a term alone."""
    min_feature_to_exercise: tuple[tuple[str, float], ...] = ()
    """(term, value) pairs: for min_term_weight, a sample exercises that term only where its feature reaches the
    value (other terms: any value > 0). The online fitter sets it for the prefill tokens (ONLINE_MIN_PREFILL_TOKENS):
    forwards of a few prompt tokens must not decide what a long prompt costs."""

    def __post_init__(self) -> None:
        floored = [t for t, _ in self.min_feature_to_exercise]
        for name, terms in (("terms", self.terms), ("min_feature_to_exercise", floored)):
            unknown = set(terms) - set(FEATURES)
            if unknown:
                raise ValueError(f"FitOptions.{name}: unknown terms {sorted(unknown)}; known: {FEATURES}")
        if not all(v > 0 for _, v in self.min_feature_to_exercise):
            raise ValueError("FitOptions.min_feature_to_exercise: every value must be > 0")
        if not (self.min_rel_singular > 0 and self.min_scale > 0 and self.max_iter >= 1):
            raise ValueError("FitOptions: min_rel_singular and min_scale must be > 0 and max_iter >= 1")
        if not self.min_term_weight >= 0:
            raise ValueError("FitOptions.min_term_weight must be >= 0")


@dataclass(frozen=True, slots=True)
class FitReport:
    n_samples: int
    mean_abs_pct_err: float
    """Mean |predicted - measured| / measured over all samples, in percent."""
    median_abs_pct_err: float
    max_abs_pct_err: float
    max_abs_err_s: float
    mean_abs_pct_err_inliers: float
    """As mean_abs_pct_err, over the samples the robust fit kept (final weight >= 0.5)."""
    n_outliers: int
    """Samples whose final robust weight is below 0.5."""
    inlier_share: float = 1.0
    """Share of the sample weight (e.g. forgetting weight) held by samples with robust weight >= 0.5."""
    fitted_terms: tuple[str, ...] = ()
    fixed_terms: tuple[str, ...] = ()
    """Terms not fitted (unidentifiable, not allowed, or dropped by BIC); they keep the prior's value."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fitted_terms"], d["fixed_terms"] = list(self.fitted_terms), list(self.fixed_terms)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FitReport":
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("fitted_terms", "fixed_terms"):
            kw[k] = tuple(kw.get(k, ()))
        return cls(**kw)


# ---- batch fit ----------------------------------------------------------------------------------------------------
def design_matrix(samples: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows and measured seconds; empty iterations (no prefill, no decode) are skipped."""
    rows, ys = [], []
    for prefills, decode_contexts, measured_s in samples:
        if not prefills and not decode_contexts:
            continue
        rows.append(CostModel.features(prefills, decode_contexts))
        ys.append(float(measured_s))
    if not rows:
        return np.zeros((0, len(FEATURES))), np.zeros(0)
    return np.vstack(rows), np.asarray(ys)


def fit_cost_model(samples: Iterable, *, options: FitOptions = FitOptions(),
                   prior: CostModel | None = None) -> tuple[CostModel, FitReport]:
    """Fit a CostModel to measured iterations; see the module docstring. Raises ValueError without usable samples."""
    X, y = design_matrix(samples)
    return fit_features(X, y, options=options, prior=prior)


def fit_features(X: np.ndarray, y: np.ndarray, *, sample_weight: np.ndarray | None = None,
                 options: FitOptions = FitOptions(), prior: CostModel | None = None) -> tuple[CostModel, FitReport]:
    """Fit from feature rows directly (rows in FEATURES order; a row may stand for several iterations, e.g. base=2).

    `sample_weight` (>= 0) multiplies each row's squared residual, e.g. exponential forgetting.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or X.shape[1] != len(FEATURES) or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be (n, {len(FEATURES)}) and y (n,), got {X.shape} and {y.shape}")
    w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    ok = np.isfinite(y) & (y > 0) & np.all(np.isfinite(X), axis=1) & np.all(X >= 0, axis=1) & (w > 0)
    X, y, w = X[ok], y[ok], w[ok]
    if len(y) == 0:
        raise ValueError("fit_cost_model: no usable samples (need finite measured_s > 0 and a non-empty batch)")
    prior_coef = prior.coefficients() if prior is not None else np.zeros(len(FEATURES))
    scale = 1.0 / y if options.relative else np.ones_like(y)

    floors = dict(options.min_feature_to_exercise)

    def exercised(j: int, name: str) -> bool:
        hit = X[:, j] >= floors[name] if name in floors else X[:, j] > 0
        return not options.min_term_weight or w[hit].sum() >= options.min_term_weight

    allowed = [j for j, name in enumerate(FEATURES) if name in options.terms and exercised(j, name)]
    active = _identifiable(X[:, allowed] * (scale * np.sqrt(w))[:, None], options.min_rel_singular)
    active = [allowed[j] for j in active]
    coef, rw = _robust_fit(X, y, w, scale, active, prior_coef, options)
    if options.drop_unsupported and len(active) > 1:
        kept, coef_kept = _drop_by_bic(X, y, w * rw, scale, active, coef, prior_coef, options)
        if kept != active:
            active = kept
            coef, rw = _robust_fit(X, y, w, scale, active, prior_coef, options)
    model = CostModel.from_coefficients(coef)
    fitted = tuple(FEATURES[j] for j in active)
    report = _report(model, X, y, rw, w, fitted)
    return model, report


def _identifiable(A: np.ndarray, tol: float) -> list[int]:
    """Greedy: keep column j if, with columns normalised, it adds a direction of singular value >= tol."""
    norms = np.linalg.norm(A, axis=0)
    kept: list[int] = []
    for j in range(A.shape[1]):
        if norms[j] <= 0:
            continue
        cand = kept + [j]
        B = A[:, cand] / norms[cand]
        if np.linalg.svd(B, compute_uv=False)[-1] >= tol:
            kept = cand
    return kept


def _wnnls(X, y, weight, scale, active, prior_coef) -> np.ndarray:
    """Non-negative least squares of the active columns; inactive terms fixed at prior_coef and subtracted."""
    coef = prior_coef.copy()
    inactive = [j for j in range(X.shape[1]) if j not in active]
    target = y - X[:, inactive] @ prior_coef[inactive] if inactive else y.copy()
    if not active:
        return coef
    r = scale * np.sqrt(weight)
    A = X[:, active] * r[:, None]
    colscale = np.linalg.norm(A, axis=0)
    colscale[colscale <= 0] = 1.0
    sol, _ = nnls(A / colscale, target * r, maxiter=50 * len(active))
    coef[active] = sol / colscale
    return coef


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    order = np.argsort(x)
    cw = np.cumsum(w[order])
    return float(x[order][np.searchsorted(cw, 0.5 * cw[-1])])


def _robust_fit(X, y, w, scale, active, prior_coef, options: FitOptions):
    """IRLS: Huber to a stable start, then bisquare. Returns (coef, robust weights in [0, 1])."""
    rw = np.ones_like(y)
    coef = _wnnls(X, y, w, scale, active, prior_coef)
    if not options.robust:
        return coef, rw
    floor = options.min_scale * (1.0 if options.relative else float(np.median(y)))
    for kind, n_iter in (("huber", min(options.max_iter, 8)), ("bisquare", options.max_iter)):
        for _ in range(n_iter):
            e = (y - X @ coef) * scale
            s = max(_MAD_TO_SIGMA * _weighted_median(np.abs(e), w), floor)
            u = np.abs(e) / s
            if kind == "huber":
                rw = np.minimum(1.0, _HUBER_K / np.maximum(u, 1e-12))
            else:
                rw = np.where(u < _BISQUARE_C, (1.0 - (u / _BISQUARE_C) ** 2) ** 2, 0.0)
            if not np.any(rw * w > 0):
                break
            new = _wnnls(X, y, w * rw, scale, active, prior_coef)
            done = np.allclose(new, coef, rtol=1e-7, atol=1e-15)
            coef = new
            if done:
                break
    return coef, rw


def _drop_by_bic(X, y, weight, scale, active, coef, prior_coef, options):
    """Backward elimination (never the base term): drop a term while BIC does not get worse."""
    n_eff = weight.sum() ** 2 / max(float((weight ** 2).sum()), 1e-300)

    def rss(c):
        return float(np.sum(weight * ((y - X @ c) * scale) ** 2))

    def bic(c, k):
        return n_eff * math.log(max(rss(c) / max(weight.sum(), 1e-300), 1e-300)) + k * math.log(max(n_eff, 2.0))

    active = list(active)
    current = bic(coef, len(active))
    while len(active) > 1:
        best = None
        for j in active:
            if FEATURES[j] == "base":
                continue
            trial = [k for k in active if k != j]
            c = _wnnls(X, y, weight, scale, trial, prior_coef)
            b = bic(c, len(trial))
            if b <= current and (best is None or b < best[0]):
                best = (b, j, c)
        if best is None:
            break
        current, j, coef = best
        active.remove(j)
    return active, coef


def _report(model: CostModel, X, y, rw, w, fitted) -> FitReport:
    pred = X @ model.coefficients()
    abs_err = np.abs(pred - y)
    pct = 100.0 * abs_err / y
    inl = rw >= 0.5
    return FitReport(
        n_samples=int(len(y)),
        mean_abs_pct_err=float(pct.mean()),
        median_abs_pct_err=float(np.median(pct)),
        max_abs_pct_err=float(pct.max()),
        max_abs_err_s=float(abs_err.max()),
        mean_abs_pct_err_inliers=float(pct[inl].mean()) if inl.any() else float("nan"),
        n_outliers=int((~inl).sum()),
        inlier_share=float(w[inl].sum() / w.sum()),
        fitted_terms=tuple(fitted),
        fixed_terms=tuple(n for n in FEATURES if n not in fitted),
    )


# ---- online refinement --------------------------------------------------------------------------------------------
ONLINE_TERMS = tuple(t for t in FEATURES if t != "attn_tokens2")
"""Terms the online fitter refines by default. The quadratic prefill term is left at the prior's value: live, the
policy itself shapes the chunks the fitter sees, and once a refit overestimated that term (from a window of short
chunks) fair planned only short chunks, so no sample could ever correct it (seen live: 1e-4 s/token^2, a 367-token
prompt predicted at 13 s, prefill starved). The linear terms stay identifiable from the samples any policy makes."""
ONLINE_MIN_TERM_WEIGHT = 8.0
"""The online fitter refits a term only while the window holds at least 8 fresh samples' worth of forgetting weight
exercising it (FitOptions.min_term_weight); otherwise the term keeps the current model's value. Seen live (emulated
A100, overload, `--fair-trace`): after ~250 decode-only forwards the few old prefill samples (forgetting weight ~0.15
each) were rejected as outliers by the robust fit, which set the prefill-token coefficient to 0 and charged prefill
to the mixed-row term (85 ms a row); the next burst's prefills ran 3-8x longer than planned and stalled the decodes.
"""


ONLINE_MIN_PREFILL_TOKENS = 256
"""For ONLINE_MIN_TERM_WEIGHT, a forward exercises the per-prefill-token term only when it prefills at least this many
tokens (FitOptions.min_feature_to_exercise). Below that, a forward's cost is mostly fixed (launch, sampling, a GPU's
memory-bound floor), and a linear fit charges it to the few tokens. Seen live (CPU, an idle server that had only
served 16-token prompts, the smg routing test): the refit put 1.8-2.8 ms on a prompt token against the 0.52 ms that
300-token prompts measure, the server reported a prefill rate of 59-575 tokens/s instead of ~1400 on /v1/loads, and
smg, which divides a worker's queued tokens by that rate, sent short requests to the busy server. Until forwards of
this size come, the term keeps its last fitted value (at first the prior's) and the base term takes the short
forwards' fixed cost (test_fit.py replays that server's forwards)."""

MIN_PREFILL_TOKEN_SHARE = 0.1
"""A refit that charges a prefill token less than this share of the starting prior's per-token cost is rejected.
Where prefill chunks and mixed decode rows come in the same forwards, the two terms can trade for each other: seen in
the simulator on the emulated A100's model with the online fit (Azure conv, 200 ms TPOT, fair at rate 0.67), a refit
set the per-token prefill cost to 0 and charged 4.4 ms to each mixed decode row; fair then planned prefill as free
when alone and 448 of 1445 requests missed their first token (docs/results.md, "The simulator's sweep on the
emulated device's model"). The quadratic term kept `prefill_s(512)` above 0, so the fitter's other check let it
through. 0.1 still lets the fit learn a device ten times faster per prefill token than its prior."""


@dataclass(frozen=True, slots=True)
class OnlineFitConfig:
    window_samples: int = 512
    """Ring buffer size: only the most recent iterations are kept."""
    refit_every: int = 32
    """Refit after this many new observations."""
    half_life_samples: float = 96.0
    """Exponential forgetting: a sample's weight halves every this many newer observations (inf: plain window)."""
    min_samples: int = 24
    """No refit before this many usable samples are in the window."""
    min_inlier_weight: float = 0.6
    """Reject a refit unless the samples it keeps (bisquare weight >= 0.5) hold this share of the forgetting weight."""
    min_prefill_token_share: float = MIN_PREFILL_TOKEN_SHARE
    """Reject a refit that charges a prefill token less than this share of the starting prior's (0: no floor)."""
    options: FitOptions = field(default_factory=lambda: FitOptions(
        terms=ONLINE_TERMS, min_term_weight=ONLINE_MIN_TERM_WEIGHT,
        min_feature_to_exercise=(("prefill_tokens", ONLINE_MIN_PREFILL_TOKENS),)))
    """By default the quadratic prefill term stays at the prior's value (see ONLINE_TERMS), and so does every term
    the recent samples do not exercise (ONLINE_MIN_TERM_WEIGHT; for the prefill tokens, ONLINE_MIN_PREFILL_TOKENS)."""

    def __post_init__(self) -> None:
        if self.window_samples < 2 or self.refit_every < 1 or self.min_samples < 1:
            raise ValueError("OnlineFitConfig: window_samples >= 2, refit_every >= 1, min_samples >= 1")
        if not self.half_life_samples > 0:
            raise ValueError("OnlineFitConfig.half_life_samples must be > 0 (math.inf for none)")
        if not 0.0 < self.min_inlier_weight <= 1.0:
            raise ValueError("OnlineFitConfig.min_inlier_weight must be in (0, 1]")
        if not 0.0 <= self.min_prefill_token_share < 1.0:
            raise ValueError("OnlineFitConfig.min_prefill_token_share must be in [0, 1)")


class OnlineCostFitter:
    """Refines a prior CostModel from measured iterations; bounded memory, no threads, no clock.

    `observe()` costs O(batch size) to build the feature row plus, every `refit_every` calls, one O(window) refit.
    `model` is always a valid model: the prior until a refit is accepted, then the latest accepted fit.
    """

    def __init__(self, prior: CostModel, config: OnlineFitConfig | None = None) -> None:
        self.prior = prior
        self.config = config = OnlineFitConfig() if config is None else config
        n = config.window_samples
        self._X = np.zeros((n, len(FEATURES)))
        self._y = np.zeros(n)
        self._seq = np.zeros(n, dtype=np.int64)
        self._count = 0  # usable observations ever stored
        self._since_refit = 0
        self._model = prior
        self._report: FitReport | None = None
        self.n_ignored = 0
        """Observations ignored (non-finite or non-positive time, empty batch)."""
        self.n_refits = 0
        self.n_rejected_fits = 0

    @property
    def model(self) -> CostModel:
        return self._model

    @property
    def report(self) -> FitReport | None:
        """The report of the latest accepted refit (None before the first)."""
        return self._report

    @property
    def n_samples(self) -> int:
        return min(self._count, self.config.window_samples)

    def observe(self, prefills, decode_contexts, measured_s: float) -> CostModel:
        """Record one measured iteration; refit when due. Returns the current model."""
        if not (prefills or decode_contexts) or not (math.isfinite(measured_s) and measured_s > 0):
            self.n_ignored += 1
            return self._model
        return self.observe_features(CostModel.features(prefills, decode_contexts), measured_s)

    def observe_features(self, row: np.ndarray, measured_s: float) -> CostModel:
        """As observe(), with a precomputed feature row."""
        if not (math.isfinite(measured_s) and measured_s > 0) or not np.all(np.isfinite(row)):
            self.n_ignored += 1
            return self._model
        i = self._count % self.config.window_samples
        self._X[i] = row
        self._y[i] = measured_s
        self._seq[i] = self._count
        self._count += 1
        self._since_refit += 1
        if self._since_refit >= self.config.refit_every and self.n_samples >= self.config.min_samples:
            self.refit()
        return self._model

    def refit(self) -> CostModel:
        """Refit now from the window; keeps the current model if the fit is not acceptable."""
        self._since_refit = 0
        n = self.n_samples
        if n < self.config.min_samples:
            return self._model
        X, y, seq = self._X[:n], self._y[:n], self._seq[:n]
        age = (self._count - 1 - seq).astype(float)
        w = np.power(0.5, age / self.config.half_life_samples)
        self.n_refits += 1
        try:
            model, report = fit_features(X, y, sample_weight=w, options=self.config.options, prior=self._model)
        except (ValueError, RuntimeError, np.linalg.LinAlgError):
            self.n_rejected_fits += 1
            return self._model
        if not self._acceptable(model, report):
            self.n_rejected_fits += 1
            return self._model
        self._model, self._report = model, report
        return model

    def _acceptable(self, model: CostModel, report: FitReport) -> bool:
        """Non-degenerate (prefill and decode still cost time; a prefill token at least MIN_PREFILL_TOKEN_SHARE of
        what the starting prior charges) and supported by most of the weighted window."""
        prior = self._model
        if prior.prefill_s(512) > 0 and not model.prefill_s(512) > 0:
            return False
        if model.per_prefill_token_s < self.config.min_prefill_token_share * self.prior.per_prefill_token_s:
            return False
        if prior.decode_s(1024) > 0 and not model.decode_s(1024) > 0:
            return False
        return report.inlier_share >= self.config.min_inlier_weight

    def save(self, path: str | Path, source: str = "online fit") -> None:
        save_model_json(path, self._model, self._report, source)


# ---- JSON ---------------------------------------------------------------------------------------------------------
def model_json(model: CostModel, report: FitReport | None = None, source: str = "") -> dict:
    """{"model": {...CostModel fields}, "fit": {...FitReport}, "source": "..."}"""
    return {"model": model.to_dict(), "fit": report.to_dict() if report is not None else {}, "source": source}


def save_model_json(path: str | Path, model: CostModel, report: FitReport | None = None, source: str = "") -> None:
    Path(path).write_text(json.dumps(model_json(model, report, source), indent=2) + "\n")


def load_model_json(path: str | Path) -> tuple[CostModel, dict]:
    """Read a cost-model JSON file; returns the model and the whole document. A bare field dict is accepted too."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    fields = doc.get("model", doc) if isinstance(doc, dict) else None
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: expected an object with a 'model' object of CostModel fields")
    missing = [k for k in ("base_s", "per_prefill_token_s") if k not in fields]
    if missing:
        raise ValueError(f"{path}: cost model lacks {missing}")
    try:
        model = CostModel.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: bad cost model: {exc}") from exc
    return model, doc
