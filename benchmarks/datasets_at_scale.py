"""Datasets at scale (issue 24): 20,000 toy digits as img2dataset-style shards and as a Hugging Face dataset.

    python benchmarks/datasets_at_scale.py --out bench-out/scale [--n 20000]

Builds the data (all 1,797 scikit-learn digits, then copies with +-6 grey-level noise, as JPEGs in 20 shards of
1,000 with a parquet each also listing 20 failed downloads, and the same images as a save_to_disk dataset),
then prints:
- the reader's images/s (shards and HF dataset; the prefetching reader, 2 threads) against the images/s the
  `loss` screen consumes (its scoring seconds per image, reading excluded);
- peak RSS and wall time of `invmm audit --screen loss --keep-top 100` on the first 1,000 images and on all;
- a sharded run (--shard 1/2 and 2/2, then `invmm merge`) against the unsharded one: the same screen scores
  and the same InvMM results.
InvMM's budget is small (--max-steps 100, checks every 50 with DDIM 20): the point is the data path.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from invmm.zoo import shipped_digits_model
from invmm.zoo.digits import digits_uint8

SHARD_SIZE = 1000


def build(out: Path, n: int, seed: int = 0) -> None:
    """Shards (img2dataset layout) and a save_to_disk dataset of the same n images."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds
    from PIL import Image

    if (out / "shards" / "done").exists():
        return
    rng = np.random.default_rng(seed)
    digits = digits_uint8()
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    images, captions, ids = [], [], []
    for s in range(math.ceil(n / SHARD_SIZE)):
        rows = []
        with wds.TarWriter(str(shards / f"{s:05d}.tar")) as tar:
            for i in range(SHARD_SIZE):
                k = s * SHARD_SIZE + i
                if k >= n:
                    break
                key = f"{s:05d}{i:04d}"
                if i % 50 == 49:  # 2% more urls failed, as img2dataset records them (in the parquet, not the tar)
                    failed = f"{s:05d}{SHARD_SIZE + i:04d}"
                    rows.append({"key": failed, "status": "failed_to_download", "error_message": "HTTP 404",
                                 "caption": None, "url": f"https://example.invalid/{failed}.jpg"})
                src = digits[k % len(digits)].astype(np.int16)
                if k >= len(digits):
                    src = src + rng.integers(-6, 7, src.shape)
                buf = io.BytesIO()
                Image.fromarray(np.clip(src, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
                caption = f"a handwritten digit {k % len(digits) % 10}"
                meta = {"url": f"https://example.invalid/{key}.jpg", "key": key, "status": "success",
                        "caption": caption, "width": 8, "height": 8}
                tar.write({"__key__": key, "jpg": buf.getvalue(), "txt": caption, "json": json.dumps(meta)})
                rows.append({**{k2: meta[k2] for k2 in ("key", "status", "caption", "url")}, "error_message": None})
                images.append(buf.getvalue())
                captions.append(caption)
                ids.append(key)
        pq.write_table(pa.Table.from_pylist(rows), shards / f"{s:05d}.parquet")
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                  "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"id": ids, "image": [{"bytes": b, "path": None} for b in images],
                                     "caption": captions}, features=features)
    ds.save_to_disk(str(out / "hf"))
    (shards / "done").touch()


def reader_rate(source: str, size: int) -> tuple[float, int]:
    from invmm.data.datasets import load_dataset
    from invmm.data.images import load_image
    from invmm.data.reader import prefetch

    t0 = time.perf_counter()
    items = load_dataset(source)
    listing = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(1 for it in prefetch(items, lambda it: load_image(it, mode="L", size=size)) if it.pixels is not None)
    return n / (time.perf_counter() - t0), n, listing


def audit(model, data, out: Path, *extra) -> dict:
    cmd = ["/usr/bin/time", "-f", "%M %e", sys.executable, "-m", "invmm.cli", "audit", str(model), str(data),
           "--out", str(out), "--screen", "loss", "--keep-top", "100", "--max-steps", "100", "--check-every", "50",
           "--sampler-steps", "20", "-k", "16", "--seed", "0", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode not in (0, 2):
        raise SystemExit(proc.stderr[-3000:])
    rss_kb, wall = proc.stderr.strip().splitlines()[-1].split()
    screen = [json.loads(line) for line in open(out / "screen" / "scores.jsonl")]
    seconds = [r["seconds"] for r in screen if r.get("seconds")]
    skipped = json.loads((out / "run.json").read_text())["dataset"].get("skipped")
    return {"peak_rss_mb": int(rss_kb) / 1024, "wall_s": float(wall), "screened": len(screen),
            "screen_scoring_img_s": len(seconds) / sum(seconds), "skipped": skipped}


def ledger(run: Path) -> dict:
    return {d["id"]: d for d in map(json.loads, open(run / "results.jsonl"))}


def screen_scores(run: Path) -> dict:
    return {d["id"]: d["score"] for d in map(json.loads, open(run / "screen" / "scores.jsonl"))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench-out/scale"))
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    out = args.out
    model = shipped_digits_model()
    t0 = time.perf_counter()
    build(out, args.n)
    print(f"data: {args.n} images in {math.ceil(args.n / SHARD_SIZE)} shards + save_to_disk "
          f"({time.perf_counter() - t0:.0f} s to build)")
    rows = {}
    for name, source in (("shards", str(out / "shards")), ("hf", str(out / "hf"))):
        rate, n, listing = reader_rate(source, 8)
        rows[name] = rate
        print(f"reader {name}: {n} images decoded at {rate:.0f} img/s (listing {listing:.1f} s)")
    runs = out / "runs"
    if runs.exists():
        import shutil

        shutil.rmtree(runs)
    small = audit(model, f"{out}/shards/{{00000..00000}}.tar", runs / "1k")
    whole = audit(model, out / "shards", runs / "all")
    print(f"audit --screen loss --keep-top 100, 1k: {small}")
    print(f"audit --screen loss --keep-top 100, {args.n}: {whole}")
    print(f"peak RSS {whole['peak_rss_mb']:.0f} MB vs {small['peak_rss_mb']:.0f} MB: "
          f"{100 * (whole['peak_rss_mb'] / small['peak_rss_mb'] - 1):+.1f}%")
    screen_rate = whole["screen_scoring_img_s"]
    print(f"screen consumes {screen_rate:.0f} img/s; reader / screen: shards {rows['shards'] / screen_rate:.1f}x, "
          f"hf {rows['hf'] / screen_rate:.1f}x")
    parts = [audit(model, out / "shards", runs / f"part{i}", "--shard", f"{i}/2") for i in (1, 2)]
    subprocess.run([sys.executable, "-m", "invmm.cli", "merge", str(runs / "part1"), str(runs / "part2"), "--out",
                    str(runs / "merged")], check=True)
    a, b = ledger(runs / "all"), ledger(runs / "merged")
    sa, sb = screen_scores(runs / "all"), screen_scores(runs / "merged")
    same_ids = set(a) == set(b) and set(sa) == set(sb)
    d_score = max((abs(a[i]["score"] - b[i]["score"]) for i in a if a[i]["score"] is not None
                   and b.get(i, {}).get("score") is not None), default=0.0)
    inf_same = all((a[i]["score"] is None) == (b[i]["score"] is None) for i in a if i in b)
    steps_same = all(a[i]["steps"] == b[i]["steps"] for i in a if i in b)
    d_screen = max(abs(sa[i] - sb[i]) for i in sa if i in sb and sa[i] is not None and sb[i] is not None)
    print(f"sharded (2 parts, {[p['wall_s'] for p in parts]} s) + merge vs unsharded: same ids {same_ids} "
          f"({len(a)} InvMM results, {len(sa)} screen scores); max |d score| {d_score:.2e}, inf alike {inf_same}, "
          f"steps alike {steps_same}; max |d screen score| {d_screen:.2e}")


if __name__ == "__main__":
    main()
