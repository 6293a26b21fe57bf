"""Dataset inference: was a whole set of images used to train the model? A p-value, not per-image guesses.

After CDI (Dubinski et al., "CDI: Copyrighted Data Identification in Diffusion Models", CVPR 2025): per-image
scores of several scorers are the features of each image; a logistic regression (standardised features) is
fitted to tell the suspect set from a reference set of known non-members on one half of each, and its
member probabilities on the other halves are compared by a one-sided Welch t-test (H1: the suspect images
score higher). A single split wastes half the data and depends on the draw, so the split is repeated; the
split p-values are combined by quantile aggregation (Meinshausen, Meier & Buehlmann 2009): twice their median,
capped at 1, is a valid p-value whatever the dependence between splits.

Assumptions (the test is only as good as them): the reference images come from the same distribution as the
suspect ones and were certainly not trained on; the per-image scores of both sets were computed the same way
(the same run folder guarantees it). A small p-value says the model treats the suspect set differently from
the reference set, which under these assumptions means it was trained on (part of) it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import ttest_ind
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from invmm.analysis.metrics import oriented
from invmm.analysis.plots import pvalue_curve_png
from invmm.errors import InvMMInputError
from invmm.runs.scores import read_run, read_scores

TEST_NAME = "one-sided Welch t-test on held-out classifier scores (CDI), split p-values aggregated as 2 x median"
MIN_PER_SET = 4  # two to fit on and two to test on, per set


@dataclass
class DatasetTestResult:
    p_value: float  # the aggregated p-value: min(1, 2 * median of the split p-values)
    median_split_p: float
    split_p_values: list[float]
    n_suspect: int
    n_reference: int
    scorers: list[str]
    test: str = TEST_NAME
    alpha: float = 0.05
    curve: list[dict] = field(default_factory=list)  # [{"n": k, "p_value": median over draws, "draws": [...]}]

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    def to_json(self) -> dict:
        return {**self.__dict__, "significant": self.significant}


def feature_matrix(scores: dict[str, list[float]], higher_is_better: dict[str, bool]) -> np.ndarray:
    """[n, k] features from k scorers' scores (one list per scorer, images in the same order), each oriented so
    that higher means member; InvMM's +inf (not reproduced) becomes a value below every finite one. That value
    depends on the finite scores given: call it once on every image a test compares (set_features)."""
    cols = [oriented(scores[name], higher_is_better[name]) for name in sorted(scores)]
    return np.stack(cols, axis=1) if cols else np.zeros((0, 0))


def set_features(suspect: dict[str, list[float]], reference: dict[str, list[float]],
                 higher_is_better: dict[str, bool]) -> tuple[np.ndarray, np.ndarray]:
    """The suspect and the reference feature rows, encoded together. The value that stands for +inf is derived
    from the finite scores; encoded per set, a not-reproduced image would get one value among the suspect images
    and another among the reference ones, and the classifier would tell the sets apart by that alone, however
    exchangeable they are. One function of the pooled scores keeps the test's level."""
    n = len(next(iter(suspect.values()), []))
    pooled = feature_matrix({k: list(suspect[k]) + list(reference[k]) for k in suspect}, higher_is_better)
    return pooled[:n], pooled[n:]


def split_p_value(suspect: np.ndarray, reference: np.ndarray, rng: np.random.Generator, seed: int) -> float:
    """One random half/half split: fit on the first halves, test on the second."""
    s, r = rng.permutation(len(suspect)), rng.permutation(len(reference))
    hs, hr = len(s) // 2, len(r) // 2
    x_fit = np.concatenate([suspect[s[:hs]], reference[r[:hr]]])
    y_fit = np.concatenate([np.ones(hs), np.zeros(hr)])
    scaler = StandardScaler().fit(x_fit)
    clf = LogisticRegression(max_iter=1000, random_state=seed).fit(scaler.transform(x_fit), y_fit)
    p_s = clf.predict_proba(scaler.transform(suspect[s[hs:]]))[:, 1]
    p_r = clf.predict_proba(scaler.transform(reference[r[hr:]]))[:, 1]
    if np.ptp(np.concatenate([p_s, p_r])) == 0:
        return 1.0  # the classifier learned nothing: no evidence
    return float(ttest_ind(p_s, p_r, equal_var=False, alternative="greater").pvalue)


def dataset_test(suspect: np.ndarray, reference: np.ndarray, *, n_splits: int = 50, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float, list[float]]:
    """(aggregated p-value, median split p-value, split p-values) for [n_s, k] and [n_r, k] feature rows."""
    for name, x in (("suspect", suspect), ("reference", reference)):
        if len(x) < MIN_PER_SET:
            raise ValueError(f"the {name} set has {len(x)} scored images; the test needs at least {MIN_PER_SET}")
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    rng = np.random.default_rng(seed)
    ps = [split_p_value(suspect, reference, rng, seed) for _ in range(n_splits)]
    ps = [1.0 if math.isnan(p) else p for p in ps]
    median = float(np.median(ps))
    return min(1.0, 2.0 * median), median, ps


def p_value_curve(suspect: np.ndarray, reference: np.ndarray, sizes: list[int], *, draws: int = 10,
                  n_splits: int = 20, seed: int = 0) -> list[dict]:
    """How the p-value shrinks with the number of suspect images: for each n, `draws` random subsets of n suspect
    and min(n, all) reference images, the median of their aggregated p-values."""
    rng = np.random.default_rng(seed)
    curve = []
    for n in sizes:
        if n < MIN_PER_SET or n > len(suspect):
            continue
        m = min(n, len(reference))
        ps = []
        for d in range(draws):
            s = suspect[rng.choice(len(suspect), n, replace=False)]
            r = reference[rng.choice(len(reference), m, replace=False)]
            ps.append(dataset_test(s, r, n_splits=n_splits, seed=seed + d)[0])
        curve.append({"n": n, "n_reference": m, "p_value": float(np.median(ps)), "draws": ps})
    return curve


def default_sizes(n: int) -> list[int]:
    """4, 8, 16, ... up to n (and n itself)."""
    sizes, k = [], MIN_PER_SET
    while k < n:
        sizes.append(k)
        k *= 2
    return sizes + [n]


def run_dataset_test(run_dir, suspect: list[str], reference: list[str], *, scorers: list[str] | None = None,
                     n_splits: int = 50, seed: int = 0, alpha: float = 0.05, curve: bool = True,
                     draws: int = 10) -> tuple[DatasetTestResult, dict]:
    """The dataset test on the scores of a run folder (`invmm evaluate`): suspect and reference images by their
    labels. Returns the result and what was left out ({"missing_scores": ids, ...})."""
    info = read_run(run_dir)
    stored = info.get("scorers") or {}
    records = [r for r in read_scores(run_dir) if r.status == "ok" and not math.isnan(r.score)]
    names = sorted(scorers or {r.scorer for r in records})
    unknown = [n for n in names if n not in stored]
    if unknown:
        raise InvMMInputError(f"{run_dir}: no scores of {', '.join(unknown)} in this run (it has "
                              f"{', '.join(sorted(stored)) or 'none'}); run invmm evaluate with them first")
    if len(names) < 2:
        raise InvMMInputError(f"{run_dir}: the dataset test combines at least 2 scorers; this run has "
                              f"{', '.join(names) or 'none'}. Add scores with invmm evaluate --scorers ...")
    by_image: dict[str, dict] = {}
    labels: dict[str, str | None] = {}
    for r in records:
        if r.scorer in names:
            by_image.setdefault(r.id, {})[r.scorer] = r.score
            labels[r.id] = r.label
    present = set(labels.values())
    for flag, wanted in (("--suspect", suspect), ("--reference", reference)):
        missing = [w for w in wanted if w not in present]
        if missing:
            raise InvMMInputError(f"{run_dir}: {flag} label(s) {', '.join(map(repr, missing))} not in the run's "
                                  f"scores; its labels are {', '.join(sorted(map(repr, present)))}")
    if set(suspect) & set(reference):
        raise InvMMInputError("--suspect and --reference must not share a label")
    complete = {i for i, d in by_image.items() if len(d) == len(names)}
    left_out = sorted(i for i in by_image if i not in complete and labels[i] in set(suspect) | set(reference))
    higher = {n: bool(stored[n].get("higher_is_better", False)) for n in names}

    def scores(wanted):
        ids = sorted(i for i in complete if labels[i] in wanted)
        return {n: [by_image[i][n] for i in ids] for n in names}

    s, r = set_features(scores(set(suspect)), scores(set(reference)), higher)
    try:
        p, median, ps = dataset_test(s, r, n_splits=n_splits, seed=seed, alpha=alpha)
    except ValueError as exc:
        raise InvMMInputError(f"{run_dir}: {exc}") from None
    result = DatasetTestResult(p, median, ps, len(s), len(r), names, alpha=alpha)
    if curve:
        result.curve = p_value_curve(s, r, default_sizes(len(s)), draws=draws, n_splits=max(1, n_splits // 2),
                                     seed=seed)
    return result, {"missing_scores": left_out}


def format_dataset_test(result: DatasetTestResult, suspect: list[str], reference: list[str]) -> str:
    verdict = "the model treats the suspect set as trained on" if result.significant else "no evidence"
    lines = [f"suspect {', '.join(suspect)} ({result.n_suspect} images) vs reference {', '.join(reference)} "
             f"({result.n_reference} images), scorers {', '.join(result.scorers)}",
             f"test: {result.test}",
             f"p-value {result.p_value:.3g} over {len(result.split_p_values)} splits (median split p "
             f"{result.median_split_p:.3g}): {verdict} at alpha {result.alpha}"]
    if result.curve:
        lines += ["", "suspect images  p-value (median over subsets)"]
        lines += [f"{c['n']:>14}  {c['p_value']:.3g}" for c in result.curve]
    return "\n".join(lines)


def write_dataset_test(result: DatasetTestResult, out_dir, title: str) -> list:
    """dataset_test.json (and the p-value curve as dataset_test.png) in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "dataset_test.json"]
    files[0].write_text(json.dumps(result.to_json(), indent=1) + "\n")
    if result.curve:
        files.append(pvalue_curve_png(result.curve, result.alpha, out_dir / "dataset_test.png", title))
    return files
