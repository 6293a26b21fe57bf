"""`invmm assess`: a run's ledger and design (run.json `design`, runs/design.py) turned into one statement about the
whole population, with exact bounds (analysis/population.py), and a decision under a release policy.

What is counted is stated once and everywhere (`quantity`): the images InvMM reproduces within the run's budget and
settings (with repeats: in at least one of them; with `score_below`: at a score at or below it). An image whose
outcome is unknown (an input error, or no result yet) counts against the model.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from invmm.analysis.population import (
    CONFIDENCE,
    Counts,
    Estimate,
    Policy,
    decide,
    estimate,
    more_to_decide,
    recall_interval,
    sample_size_for_go,
)
from invmm.errors import InvMMInputError
from invmm.records import ImageSummary, forward_equivalents, summarise
from invmm.runs.design import EVERYTHING, SCREEN_TOP, strata
from invmm.store.files import Ledger, read_run_info

SHOWN_IDS = 10  # found images named in the statement


@dataclass
class Assessment:
    counts: Counts
    estimate: Estimate
    quantity: str
    budget: dict
    found_ids: list[str]
    recall: dict | None = None
    policy: Policy | None = None
    decision: str | None = None
    plan: dict | None = None  # undecided: how many more random images would decide, and their cost
    design_kind: str = EVERYTHING
    notes: list[str] = field(default_factory=list)
    summaries: dict[str, ImageSummary] = field(default_factory=dict, repr=False)  # per image, as the ledger holds it

    def to_json(self) -> dict:
        c = self.counts
        return {
            "population": c.population, "quantity": self.quantity,
            "census": {"n": c.census, "reproduced": c.census_found, "unknown": c.census_unknown,
                       "kind": self.design_kind},
            "sample": {"n": c.drawn, "reproduced": c.found, "unknown": c.unknown, "frame": c.rest},
            "estimate": self.estimate.to_json(), "recall": self.recall, "decision": self.decision,
            "policy": self.policy.to_json() if self.policy else None, "budget": self.budget,
            "found": self.found_ids, "plan": self.plan, "statement": statement(self), "notes": self.notes,
        }


def reproduced(s: ImageSummary, score_below: float | None) -> bool:
    """Reproduced in at least one repeat (at a score at or below `score_below`, when given)."""
    scores = [r.get("score") for r in s.repeats] if s.repeats else [s.score]
    finite = [x for x in scores if x is not None and math.isfinite(x)]
    return bool(finite) and (score_below is None or min(finite) <= score_below)


def assess_run(run_dir: str | Path, policy: Policy | None = None, *, score_below: float | None = None,
               confidence: float = CONFIDENCE) -> Assessment:
    run_dir = Path(run_dir)
    info = read_run_info(run_dir, "audit run")
    if policy is not None:
        confidence = policy.confidence
    records = Ledger(run_dir).read()
    summaries = {s.id: s for s in summarise(records)}
    design = info.get("design") or _inferred(info, summaries)
    if design.get("part"):
        raise InvMMInputError(f"{run_dir} is one part of a sharded audit: its sample is drawn over the whole "
                              "dataset, so assess the merged run (`invmm merge PARTS --out RUN`)")
    ids = strata(design)
    kind = (design.get("census") or {}).get("kind", EVERYTHING)
    census = [i for i, s in ids.items() if s == "census"] if kind != EVERYTHING else \
        [i for i in summaries if ids.get(i) != "sample"]
    sample = [i for i, s in ids.items() if s == "sample"]
    population = design["population"]
    census_n = population if kind == EVERYTHING else len(census)

    def tally(group):
        found = [i for i in group if i in summaries and summaries[i].status == "ok" and
                 reproduced(summaries[i], score_below)]
        unknown = [i for i in group if i not in summaries or summaries[i].status != "ok"]
        return found, unknown

    cf, cu = tally(census)
    sf, su = tally(sample)
    census_unknown = len(cu) + (census_n - len(census) if kind == EVERYTHING else 0)  # not yet in the ledger
    counts = Counts(population, census_n, len(cf), len(sample), len(sf), census_unknown, len(su))
    est = estimate(counts, confidence)
    cfg = info.get("config", {})
    repeats = info.get("repeats", 1)
    budget = {"max_steps": cfg.get("max_steps"), "preset": cfg.get("preset"), "similarity": cfg.get("similarity"),
              "threshold": cfg.get("beta"), "repeats": repeats, "score_below": score_below,
              "model": info.get("model_path"), "seed": design.get("seed", info.get("seed"))}
    a = Assessment(counts, est, quantity(budget), budget, sorted(cf + sf), design_kind=kind,
                   recall=recall_interval(counts, confidence) if kind == SCREEN_TOP else None, policy=policy,
                   summaries=summaries)
    if counts.census_unknown or counts.unknown:
        a.notes.append(f"{counts.census_unknown + counts.unknown} image(s) of the design have no outcome (an input "
                       "error, or no result yet): they count as reproduced in the upper bound and as not in the "
                       "lower one")
    if policy is not None:
        a.decision = decide(est, len(cf) + len(sf), policy)
        if a.decision == "undecided":
            a.plan = _plan(counts, policy, info, records, repeats)
    return a


def _inferred(info: dict, summaries: dict) -> dict:
    """The design of a run made before designs were recorded: a census of what it inverted, of the screened
    population (the screen's top K: no sample) or of the whole dataset."""
    screen = info.get("screen")
    if screen:
        return {"population": screen.get("of", len(summaries)), "seed": info.get("seed"),
                "census": {"kind": SCREEN_TOP, "n": len(summaries), "ids": sorted(summaries)}, "sample": None}
    return {"population": max((info.get("dataset") or {}).get("n", 0), len(summaries)), "seed": info.get("seed"),
            "census": {"kind": EVERYTHING}, "sample": None}


def _plan(c: Counts, policy: Policy, info: dict, records: list, repeats: int) -> dict | None:
    """How many more random images would decide, and what they cost at this run's own pace (its inversions that
    did not reproduce their image: the worst case `invmm estimate` bounds)."""
    plan = more_to_decide(c, policy)
    if plan is None:
        return None
    failed = [r for r in records if r.status == "ok" and not r.success and r.calls]
    fe = statistics.median(forward_equivalents(r.calls) for r in failed) if failed else None
    sessions = info.get("sessions", [])
    done = sum(x.get("scored", 0) + x.get("errors", 0) for x in sessions)
    seconds = sum(x.get("seconds", 0) for x in sessions) / done if done else None
    more = plan["more"] * repeats
    plan.update({"forward_equivalents": None if fe is None else int(fe * more),
                 "hours": None if seconds is None else seconds * more / 3600})
    return plan


def quantity(budget: dict) -> str:
    text = f"reproduced by this model within {budget['max_steps']:,} steps"
    if (budget.get("repeats") or 1) > 1:
        text += f" (in at least one of {budget['repeats']} repeats)"
    if budget.get("score_below") is not None:
        text += f" at a score <= {budget['score_below']:g}"
    settings = f"{budget.get('preset')} settings, {budget.get('similarity')} similarity >= {budget.get('threshold')}"
    return f"{text} ({settings})"


def _pct(count: float | None, n: int) -> str:
    return "-" if count is None else f"{100 * count / n:.3g}%"


def statement(a: Assessment) -> str:
    """One sentence for a model card: what is known of the whole population, at what confidence."""
    e, c = a.estimate, a.counts
    conf = f"{100 * e.confidence:g}%"
    n = f"{c.population:,}"
    found = len(a.found_ids)
    names = ", ".join(a.found_ids[:SHOWN_IDS]) + (", ..." if found > SHOWN_IDS else "")
    found_text = f"found {found}" + (f" ({names})" if found else "")
    if c.rest == 0 and not c.census_unknown:
        text = f"Of the {n} audited images, {found} ({_pct(found, c.population)}) are {a.quantity}: every image " \
               "was inverted, so this is the exact count" + (f" ({names})" if found else "") + "."
    elif e.upper is None:
        text = (f"At least {e.lower:,} of the {n} audited images are {a.quantity} (with {conf} confidence); "
                f"{found_text}. Only the screen's {c.census:,} most suspicious images were inverted and the other "
                f"{c.rest:,} were not looked at, so nothing bounds how many more there are: add a random sample "
                "(`invmm audit ... --sample M`).")
    else:
        text = (f"With {conf} confidence at most {_pct(e.upper, c.population)} ({e.upper:,} of {n}) of the audited "
                f"images are {a.quantity}; {found_text}")
        if e.lower > found:
            text += f"; at least {e.lower:,}"
        if a.recall and a.recall.get("lower") is not None:
            text += f"; screen recall >= {a.recall['lower']:.2f}"
        text += "."
    return text


def format_assessment(a: Assessment) -> str:
    c, e = a.counts, a.estimate
    lines = [statement(a), ""]
    rows = [("population", f"{c.population:,} images"),
            ("census stratum", f"{c.census:,} ({'every image' if a.design_kind == EVERYTHING else a.design_kind}): "
                               f"{c.census_found} reproduced" + (f", {c.census_unknown} unknown" if c.census_unknown
                                                                 else "")),
            ("sample of the rest", f"{c.drawn:,} of {c.rest:,}: {c.found} reproduced" +
             (f", {c.unknown} unknown" if c.unknown else "") if c.drawn else
             ("none (the rest was not looked at)" if c.rest else "none needed (a census)")),
            ("estimate", "-" if math.isnan(e.count) else f"{e.count:,.1f} images ({_pct(e.count, c.population)})"),
            (f"{100 * e.confidence:g}% one-sided bounds", f"{e.lower:,} to " +
             ("unbounded" if e.upper is None else f"{e.upper:,}")),
            (f"{100 * e.confidence:g}% two-sided interval", f"[{e.two_sided[0]:,}, " +
             ("unbounded" if e.two_sided[1] is None else f"{e.two_sided[1]:,}") + "]")]
    if a.recall:
        r = a.recall
        rows.append(("screen recall", "-" if r["recall"] is None else
                     f"{r['recall']:.2f} [{_fmt(r['lower'])}, {_fmt(r['upper'])}] (share of the reproduced "
                     "images that the screen's top K holds)"))
    if a.policy:
        p = a.policy
        limit = f"at most {100 * p.max_rate:g}% ({p.max_rate * c.population:,.1f} images)" + \
            (f" and at most {p.max_count} found" if p.max_count is not None else "")
        rows.append(("policy", limit))
        rows.append(("decision", a.decision))
        if a.plan:
            cost = "" if a.plan.get("hours") is None else f", about {a.plan['hours']:.2f} hours at this run's pace"
            rows.append(("to decide", f"about {a.plan['more']:,} more random images ({a.plan['sample']:,} in all; "
                                      f"{a.plan['decision']} if the share found so far holds{cost})"))
        elif a.decision == "undecided":
            rows.append(("to decide", "no sample of the rest can decide at this policy"))
    width = max(len(k) for k, _ in rows)
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += [f"note: {n}" for n in a.notes]
    return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def planning(population: int, policy: Policy, census: int = 0) -> dict:
    """Before an audit: the random sample of the rest that reaches a go at `policy` if none of it is reproduced
    (nor any image of the census): the hypergeometric rule of three."""
    rest = population - census
    allowed = policy.max_rate * population
    m = sample_size_for_go(rest, math.floor(allowed), policy.confidence)
    return {"population": population, "census": census, "rest": rest, "allowed": allowed, "sample": m,
            "rule_of_three": None if policy.max_rate <= 0 else math.ceil(3 / policy.max_rate)}


def format_plan(plan: dict, confidence: float) -> str:
    census = f"the screen's top {plan['census']:,} (a census) and " if plan["census"] else ""
    three = f" (the rule of three gives about {plan['rule_of_three']:,})" if plan["rule_of_three"] else ""
    if plan["sample"] is None:
        return (f"plan: no sample can reach a go at {plan['allowed']:,.1f} images: the policy allows fewer than the "
                "census could already hold")
    return (f"plan: to show with {100 * confidence:g}% confidence that at most {plan['allowed']:,.1f} of the "
            f"{plan['population']:,} images are reproduced, invert {census}a random sample of {plan['sample']:,} "
            f"of the other {plan['rest']:,} (`invmm audit ... --sample {plan['sample']}`): a go if none of them is "
            f"reproduced{three}; worst case (nothing reproduced): "
            f"{plan['forward_equivalents_worst_case']:,} forward-equivalents, {plan['hours_worst_case']:.2f} hours "
            "on this device")
