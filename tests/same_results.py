"""The one comparison of two runs' results, for every test that compares two runs or two batchings (a feature on
and off, repeats against a single run, a budget cut short, parts against the whole, a resumed run).

It asserts what InvMM guarantees across batch shapes and machines, and nothing tighter: CPU kernels round
differently with the shape of the batch an image's rows sit in, with the number of threads and from machine to
machine (a check's worst similarity came out 0.952884 on one machine and 0.952883 on another of the same kind).

- decisions and counts are identical: status, success, error kind, steps, which scores are inf, the steps of the
  checks, the guidance scale that passed, the number of check samples;
- KL, scores, lambda and loss means agree within relative SCORE_RTOL;
- similarities agree within SIM_ATOL (they are stored rounded to 1e-6).

No test compares floats of two runs exactly; a test of one deterministic computation against itself (a JSON
round trip, the same run twice in one process) may.
"""

from __future__ import annotations

import math

import torch

from invmm.records import CheckRecord, InversionRecord

SCORE_RTOL = 1e-4
SIM_ATOL = 1e-5


def close(a, b, *, rtol: float = SCORE_RTOL, atol: float = 0.0) -> bool:
    """a and b within tolerance; None, inf and NaN only equal themselves."""
    if a is None or b is None:
        return a is None and b is None
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= max(atol, rtol * max(abs(a), abs(b)))


def _record(r) -> InversionRecord:
    return InversionRecord.from_json(r) if isinstance(r, dict) else r


def assert_same_result(a, b, *, what: str = "", refined: bool = True) -> None:
    """One inversion of two runs (InversionRecords, or their ledger lines) agrees as the batching guarantee says;
    with `refined`, its refined score and the points it came from too (False: a run with the refinement against
    one without)."""
    a, b = _record(a), _record(b)
    where = f"{what}{' ' if what else ''}{a.id} r{a.repeat}"
    assert (a.id, a.repeat, a.status, a.success, a.error_kind, a.steps, a.guidance_scale) == \
           (b.id, b.repeat, b.status, b.success, b.error_kind, b.steps, b.guidance_scale), where
    names = ("score", "kl", "final_lambda") + (("refined_score", "refined_success") if refined else ())
    for name in names:
        assert close(getattr(a, name), getattr(b, name)), f"{where}: {name} {getattr(a, name)} != {getattr(b, name)}"
    assert_same_similarities(a.similarities, b.similarities, what=where)
    assert_same_checks(a.checks, b.checks, what=where)
    if refined:
        assert (a.refine is None) == (b.refine is None), where
        pa, pb = (a.refine or {}).get("points", []), (b.refine or {}).get("points", [])
        # per point: step, KL, copies, samples, pass chance (and per-sample copy bits with several scales)
        assert [(p[0], p[2], p[3], *p[5:]) for p in pa] == [(p[0], p[2], p[3], *p[5:]) for p in pb], where
        assert all(close(x[1], y[1]) and close(x[4], y[4]) for x, y in zip(pa, pb)), where


def assert_same_similarities(a, b, *, what: str = "") -> None:
    assert len(a) == len(b), f"{what}: {len(a)} similarities against {len(b)}"
    assert all(close(x, y, rtol=0.0, atol=SIM_ATOL) for x, y in zip(a, b)), f"{what}: similarities {a} != {b}"


def assert_same_checks(a, b, *, what: str = "") -> None:
    """Two lists of checks: the same steps; KL, lambda and the loss mean within SCORE_RTOL, the worst similarity
    within SIM_ATOL."""
    a, b = [CheckRecord.of(c) for c in a], [CheckRecord.of(c) for c in b]
    assert [c.step for c in a] == [c.step for c in b], f"{what}: check steps differ"
    for x, y in zip(a, b):
        assert close(x.kl, y.kl) and close(x.lam, y.lam) and close(x.rec_mean, y.rec_mean), f"{what}: {x} != {y}"
        assert close(x.min_similarity, y.min_similarity, rtol=0.0, atol=SIM_ATOL), f"{what}: {x} != {y}"


def assert_same_runs(a, b, *, what: str = "", refined: bool = True) -> None:
    """Two runs' results (lists of records or ledger lines, in any order): the same inversions, each the same."""
    ka = {(_record(r).id, _record(r).repeat): r for r in a}
    kb = {(_record(r).id, _record(r).repeat): r for r in b}
    assert ka.keys() == kb.keys(), f"{what}: inversions {sorted(ka.keys() ^ kb.keys())[:4]} in one run only"
    for k in ka:
        assert_same_result(ka[k], kb[k], what=what, refined=refined)


def assert_close_tensors(a: torch.Tensor, b: torch.Tensor, *, rtol: float = SCORE_RTOL, atol: float = 1e-6) -> None:
    """Tensors two runs computed (a fitted mu, check samples): the same shape, values within tolerance."""
    assert a.shape == b.shape
    torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol)
