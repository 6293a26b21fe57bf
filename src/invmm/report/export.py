"""A run's ledger as one flat table, CSV or Parquet: one row per image (its summary over the repeats), or
with per_repeat one row per inversion as the ledger holds them."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from invmm.errors import InvMMInputError
from invmm.records import InversionRecord, forward_equivalents, summarise
from invmm.runs.design import strata
from invmm.store.files import LEDGER_FILE, Ledger, atomic_write_bytes, read_run_info

COLUMNS = ["id", "stratum", "path", "label", "caption", "status", "score", "success", "n_repeats", "successes",
           "score_low", "score_high", "interval_coverage", "refined_score", "refined_success", "steps",
           "stopped_early", "stop_step", "min_similarity", "kl", "final_lambda", "guidance_scale", "prompt_mode",
           "prompt", "class_mode", "class_label", "class_name", "seconds", "forward_equivalents", "check_forward",
           "map_forward", "seed", "resized", "error_kind", "error", "meta", "reproduced_fraction", "measured_on",
           "mask", "mask_sha256", "masked_fraction"]
# One inversion per row: the image's summary columns give way to the repeat's index and stream.
REPEAT_COLUMNS = [c for c in COLUMNS if c not in ("n_repeats", "successes", "score_low", "score_high",
                                                  "interval_coverage")] + ["repeat", "image_seed"]


def _value(r: InversionRecord, column: str, strata: dict | None = None):
    if column == "stratum":  # a sampled audit's design: census (the screen's top K, or everything) or sample
        return (strata or {}).get(r.id, "census")
    if column == "forward_equivalents":
        return forward_equivalents(r.calls) if r.calls else None
    if column == "stopped_early":  # None: a run without --early-stop
        return None if r.early_stop is None else bool(r.early_stop.get("stopped"))
    if column == "stop_step":
        return r.early_stop.get("step") if r.early_stop and r.early_stop.get("stopped") else None
    if column in ("check_forward", "map_forward"):
        return r.calls.get(column) if r.calls else None
    if column == "mask":  # the mask file (or, for --mask auto, why the image kept its whole-image result)
        return None if r.mask is None else (r.mask.get("path") or r.mask.get("note"))
    if column == "masked_fraction":
        return None if r.mask is None else r.mask.get("fraction")
    if column == "mask_sha256":
        return r.region[1] if r.measured_on == "mask" else None
    if column == "meta":  # a shard's .json fields (url, sizes, ...), as JSON text: one column whatever they are
        return json.dumps(r.meta, sort_keys=True) if r.meta else None
    return getattr(r, column)


def rows(results: list[InversionRecord], columns: list[str] = COLUMNS, strata: dict | None = None) -> list[dict]:
    return [{c: _value(r, c, strata) for c in columns} for r in results]


def _csv_value(v):
    if isinstance(v, float) and math.isinf(v):
        return "inf"  # InvMM's "not reproduced"; pandas and numpy read it back as float inf
    if isinstance(v, float) and math.isnan(v):
        return ""
    return v


def write_table_csv(results: list[InversionRecord], path: Path, columns: list[str] = COLUMNS,
                    strata: dict | None = None) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows(results, columns, strata))
    atomic_write_bytes(Path(path), buf.getvalue().encode("utf-8"))
    return Path(path)


def export_run(run_dir: str | Path, fmt: str = "csv", out: str | Path | None = None, *,
               per_repeat: bool = False) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / LEDGER_FILE).exists():
        raise InvMMInputError(f"{run_dir}: no {LEDGER_FILE}; give a folder written by `invmm audit` or `measure`")
    if fmt not in ("csv", "parquet"):
        raise InvMMInputError(f"--format must be csv or parquet, got {fmt!r}")
    out = Path(out) if out else run_dir / f"results.{fmt}"
    lines = Ledger(run_dir).read()
    results, columns = (lines, REPEAT_COLUMNS) if per_repeat else (summarise(lines), COLUMNS)
    stratum = strata(read_run_info(run_dir).get("design"))
    if fmt == "csv":
        return write_table_csv(results, out, columns, stratum)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InvMMInputError("Parquet export needs pyarrow: pip install 'invmm[parquet]'") from None
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows(results, columns, stratum)), sink)
    atomic_write_bytes(out, sink.getvalue().to_pybytes())
    return out
