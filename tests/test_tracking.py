"""Checkpoint discovery (data/checkpoints.py) and the onset logic (analysis/tracking.py): the groundwork of tracking
memorization over training."""

import json
import math

import pytest
import torch
from PIL import Image
from same_results import assert_close_tensors
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from invmm.analysis.population import Policy
from invmm.analysis.tracking import CheckpointOutcome, format_track, last_safe, onsets, summarise_track
from invmm.cli import app
from invmm.data.checkpoints import discover
from invmm.errors import InvMMInputError
from invmm.families import load_adapter
from invmm.records import InversionRecord
from invmm.store.files import Ledger, atomic_write_json


def _pipeline(path):
    path.mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))


def _unet(path, name="unet"):
    (path / name).mkdir(parents=True)
    (path / name / "config.json").write_text("{}")
    (path / "optimizer.bin").write_bytes(b"")  # accelerate's state beside it


def test_discovery_orders_steps_and_tells_each_layout(tmp_path):
    run = tmp_path / "run"
    _pipeline(run / "checkpoint-1000")
    _unet(run / "checkpoint-500")
    _unet(run / "checkpoint-1500", "transformer")
    (run / "checkpoint-2000").mkdir()
    (run / "checkpoint-2000" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (run / "logs").mkdir()  # not a checkpoint: ignored
    _pipeline(tmp_path / "other")
    found = discover(run, explicit=[f"250={tmp_path / 'other'}"], final=tmp_path / "other", base="base")
    assert [(c.step, c.kind, c.denoiser) for c in found] == [
        (250, "pipeline", None), (500, "denoiser", "unet"), (1000, "pipeline", None),
        (1500, "denoiser", "transformer"), (2000, "lora", None), (2001, "pipeline", None)]
    assert found[4].path.name == "pytorch_lora_weights.safetensors"
    assert discover(run, final=tmp_path / "other", final_step=3000, base="b")[-1].step == 3000


def test_discovery_names_what_is_wrong(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-100").mkdir(parents=True)
    (run / "checkpoint-100" / "notes.txt").write_text("x")
    with pytest.raises(InvMMInputError, match=r"checkpoint-100 \(step 100\) holds no model.*--checkpoint STEP=PATH"):
        discover(run)
    with pytest.raises(InvMMInputError, match="no checkpoint-N folders"):
        discover(tmp_path / "run" / "checkpoint-100")
    _unet(tmp_path / "u" / "checkpoint-5")
    with pytest.raises(InvMMInputError, match=r"holds the unet alone; give the pipeline it belongs to as --base"):
        discover(tmp_path / "u")
    with pytest.raises(InvMMInputError, match="expected STEP=PATH"):
        discover(None, explicit=["five=x"])
    _pipeline(tmp_path / "p" / "checkpoint-7")
    with pytest.raises(InvMMInputError, match="two checkpoints at step 7"):
        discover(tmp_path / "p", explicit=[f"7={tmp_path / 'p' / 'checkpoint-7'}"])


def test_onset_is_the_first_reproducing_checkpoint_and_stays_says_whether_it_lasts():
    every = frozenset("abcd")
    outcomes = [CheckpointOutcome(2000, frozenset("a"), every), CheckpointOutcome(1000, frozenset(), every),
                CheckpointOutcome(3000, frozenset("ab"), every),
                CheckpointOutcome(4000, frozenset("ac"), every - {"b"})]
    got = onsets(outcomes)
    assert got["a"] == {"onset": 2000, "stays": True, "reproduced_at": [2000, 3000, 4000]}
    assert got["b"] == {"onset": 3000, "stays": True, "reproduced_at": [3000]}  # not measured at 4000: no evidence
    assert got["c"] == {"onset": 4000, "stays": True, "reproduced_at": [4000]}
    assert got["d"] == {"onset": None, "stays": None, "reproduced_at": []}
    flicker = [CheckpointOutcome(1, frozenset("a"), every), CheckpointOutcome(2, frozenset(), every)]
    assert onsets(flicker)["a"]["stays"] is False


def test_the_last_safe_checkpoint_is_the_end_of_the_first_stretch_within_the_policy():
    def at(step, upper):
        return CheckpointOutcome(step, frozenset(), frozenset(), upper=upper, population=1000)

    run = [at(1000, 3), at(2000, 9), at(3000, 12), at(4000, 5)]
    assert last_safe(run, 0.01) == 2000  # 12 > 10 at 3000: what comes after does not make it safe again
    assert last_safe(run, 0.001) is None
    assert last_safe(run, 0.02) == 4000


# --- invmm track through the command, on the tiny pixel pipeline -------------------------------------------------

runner = CliRunner()
# every check passes (threshold -1): each checkpoint reproduces every image in two steps
FAST = ["--max-steps", "2", "--check-every", "2", "--sampler-steps", "2", "--batch-size", "2", "--similarity",
        "pixel", "--threshold", "-1", "--map-samples", "0"]


@pytest.fixture(scope="module")
def four_images(tmp_path_factory, tiny_model):
    """4 PNGs for the tiny pixel model, labelled member / other, in a manifest."""
    from families import images

    root = tmp_path_factory.mktemp("track-data")
    adapter = load_adapter(str(tiny_model))
    rows = ["path,id,label"]
    for i, x in enumerate(images(adapter, 4, seed=3)):
        pixels = ((x.permute(1, 2, 0).squeeze(-1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        Image.fromarray(pixels, mode="L" if x.shape[0] == 1 else "RGB").save(root / f"img{i}.png")
        rows.append(f"{root / f'img{i}.png'},img{i},{['member', 'other'][i % 2]}")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "data.csv"


def _perturbed_unet(model, out, seed):
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(model / "unet", local_files_only=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    unet.save_pretrained(out / "unet", safe_serialization=True)
    (out / "optimizer.bin").write_bytes(b"")  # accelerate's state beside it: never read
    return unet


def test_track_audits_every_layout_resumes_and_adds_a_later_checkpoint(tmp_path, tiny_model, four_images):
    from families import make_lora

    train = tmp_path / "train"
    unet10 = _perturbed_unet(tiny_model, train / "checkpoint-10", 10)
    make_lora(tiny_model, train / "checkpoint-20", seed=1)  # a peft adapter folder, as the pixel UNet's LoRA is
    out = tmp_path / "track"
    cmd = ["track", str(train), str(four_images), "--out", str(out), "--base", str(tiny_model), "--final",
           str(tiny_model), "--final-step", "30", "--screen", "loss:t=50", "--keep", "1.0", "--max-rate", "0.5",
           "--positive", "member", *FAST]
    res = runner.invoke(app, cmd)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "track.json").read_text())
    rows = summary["checkpoints"]
    assert [(r["step"], r["kind"]) for r in rows] == [(10, "denoiser"), (20, "lora"), (30, "pipeline")]
    for r in rows:  # a census of the 4 images: the exact count, a zero-width interval
        assert (r["reproduced"], r["n"], r["lower"], r["upper"], r["population"]) == (4, 4, 4, 4, 4)
        screen = [json.loads(line) for line in (out / f"step-{r['step']}" / "screen" / "scores.jsonl").read_text()
                  .splitlines()]  # the AUC against sklearn's, members positive, a lower loss more member-like
        assert r["screen"]["scorer"] == "loss:t=50" and r["screen"]["auc"] == pytest.approx(roc_auc_score(
            [d["label"] == "member" for d in screen], [-d["score"] for d in screen]), abs=1e-12)
        assert r["decision"] == "no-go" and r["median_score"] is not None
    assert summary["images"]["img0"]["onset"] == 10 and summary["images"]["img0"]["stays"] is True
    assert summary["last_safe"] is None and "step 10 breaks it: up to 4 of 4 images, more than 2" in \
        summary["last_safe_why"]
    # Each checkpoint's run audited its own weights: the denoiser's view holds checkpoint-10's UNet, the LoRA run
    # loaded checkpoint-20's adapter, and the three fingerprints differ.
    infos = {r["step"]: json.loads((out / f"step-{r['step']}" / "run.json").read_text()) for r in rows}
    view = load_adapter(infos[10]["model_path"])
    assert all(torch.equal(a, b) for a, b in zip(view.denoiser.state_dict().values(), unet10.state_dict().values()))
    assert infos[20]["model_path"] == str(tiny_model) and "checkpoint-20" in infos[20]["model"]["loras"][0]["path"]
    assert len({i["model_fingerprint"] for i in infos.values()}) == 3
    assert infos[10]["track"] == {"step": 10, "checkpoint": str(train / "checkpoint-10"), "kind": "denoiser",
                                  "base": str(tiny_model)}
    assert "img0" in res.output and "Onsets" in res.output

    # The same command again resumes every run; a checkpoint that appeared meanwhile is the only one audited.
    _perturbed_unet(tiny_model, train / "checkpoint-25", 25)
    res = runner.invoke(app, cmd)
    assert res.exit_code == 0, res.output
    assert res.output.count("4 already done, 0 scored now") == 3 and "step 25: 4 images; 0 already done, 4 scored " \
        "now" in res.output
    assert [r["step"] for r in json.loads((out / "track.json").read_text())["checkpoints"]] == [10, 20, 25, 30]

    # The report of the tracking: the figure inline, the tables, the last safe checkpoint in words.
    res = runner.invoke(app, ["report", str(out), "--max-rate", "0.5"])
    assert res.exit_code == 0, res.output
    page = (out / "report" / "index.html").read_text()
    assert "data:image/png;base64," in page and (out / "report" / "track.png").stat().st_size > 10_000
    assert "Last safe checkpoint" in page and "<b>none</b>" in page and "step 10 breaks it" in page
    assert "First checkpoint that reproduces a training image:</b> step 10" in page
    assert page.count("<tr>") == 1 + 4 + 1 + 4  # the checkpoints' header and rows, the onsets' header and rows
    # The report rewrote track.json with what `track` was given: its labels (so the AUC) and its policy.
    again = json.loads((out / "track.json").read_text())
    assert again["labels"] == {"positive": ["member"], "negative": None} and again["policy"]["max_rate"] == 0.5
    assert all(r["screen"]["auc"] is not None for r in again["checkpoints"])


def test_track_names_a_bad_checkpoint_and_keeps_what_it_audited(tmp_path, tiny_model, four_images):
    train = tmp_path / "train"
    _perturbed_unet(tiny_model, train / "checkpoint-10", 10)
    cmd = ["track", str(train), str(four_images), "--out", str(tmp_path / "t"), *FAST]
    res = runner.invoke(app, cmd)  # a denoiser alone, and no --base: said before anything runs
    assert res.exit_code == 2 and "holds the unet alone; give the pipeline it belongs to as --base" in res.output
    (train / "checkpoint-20").mkdir()
    (train / "checkpoint-20" / "scheduler.bin").write_bytes(b"")
    res = runner.invoke(app, [*cmd, "--base", str(tiny_model)])
    assert res.exit_code == 2 and "checkpoint-20 (step 20) holds no model" in res.output
    # A checkpoint that cannot be loaded fails alone: the others are audited and summarised, the exit code says so.
    (train / "checkpoint-20" / "unet").mkdir()
    (train / "checkpoint-20" / "unet" / "config.json").write_text("{\"_class_name\": \"UNet2DModel\"}")
    res = runner.invoke(app, [*cmd, "--base", str(tiny_model)])
    assert res.exit_code == 2 and f"step 20: checkpoint {train / 'checkpoint-20'}:" in res.output
    assert "no weights found" in res.output
    summary = json.loads((tmp_path / "t" / "track.json").read_text())
    assert [r["step"] for r in summary["checkpoints"]] == [10] and summary["failed"][0]["step"] == 20
    # A setting that no checkpoint can run with stops the tracking at once, naming it; the audited run stays.
    res = runner.invoke(app, [*cmd, "--base", str(tiny_model), "--refine", "--refine-samples", "2"])
    assert res.exit_code == 2 and "step 10" in res.output and "refine_samples must be >=" in res.output
    assert "the checkpoints audited before it are kept" in res.output
    assert len((tmp_path / "t" / "step-10" / "results.jsonl").read_text().splitlines()) == 4


# --- track.json from run folders whose outcomes are known ----------------------------------------------------------

def _step_run(folder, step, population, sample_ids, reproduced, scores=None, labels=None):
    """An audit folder of one checkpoint: a random sample of `population` images, `reproduced` ids succeed."""
    folder.mkdir(parents=True)
    design = {"population": population, "seed": 0, "population_ids_sha256": "x",
              "census": {"kind": "none", "n": 0},
              "sample": {"m": len(sample_ids), "frame": population, "ids": list(sample_ids)}}
    atomic_write_json(folder / "run.json", {"kind": "audit", "design": design, "repeats": 1, "seed": 0,
                                            "config": {"max_steps": 1000, "preset": "ddpm", "similarity": "pixel",
                                                       "beta": 0.985},
                                            "track": {"step": step, "checkpoint": f"ck-{step}", "kind": "denoiser"}})
    (folder / "results.jsonl").touch()
    ledger = Ledger(folder)
    for i in sample_ids:
        ok = i in reproduced
        ledger.append(InversionRecord(id=i, path="", score=(scores or {}).get(i, 0.5) if ok else math.inf,
                                      success=ok, steps=1000))


def test_track_json_carries_each_checkpoints_exact_interval_onsets_and_the_last_safe_checkpoint(tmp_path):
    from scipy.stats import hypergeom

    ids = [f"im{i:02d}" for i in range(300)]
    plan = {100: set(), 200: {"im00", "im01"}, 300: {"im00", "im01", "im02", "im05"}, 400: {"im00", "im02", "im05"}}
    for step, found in plan.items():
        _step_run(tmp_path / f"step-{step}", step, 500, ids, found, scores={"im00": 0.2, "im01": 0.4, "im02": 0.9})
    summary = summarise_track(tmp_path, policy=Policy(0.02))
    rows = {r["step"]: r for r in summary["checkpoints"]}
    for step, found in plan.items():  # the two-sided 95% interval, from scipy's hypergeometric independently
        k, r = len(found), rows[step]
        upper = max(d for d in range(k, 500 - 300 + k + 1) if hypergeom.cdf(k, 500, d, 300) > 0.025)
        lower = 0 if k == 0 else min(d for d in range(k, 501) if hypergeom.sf(k - 1, 500, d, 300) > 0.025)
        assert (r["reproduced"], r["n"], r["lower"], r["upper"]) == (k, 300, lower, upper), step
    assert rows[300]["median_score"] == pytest.approx(0.45)  # of 0.2, 0.4, 0.5, 0.9
    images = summary["images"]
    assert images["im00"]["onset"] == 200 and images["im00"]["stays"] is True
    assert images["im01"]["onset"] == 200 and images["im01"]["stays"] is False  # lost at step 400
    assert images["im05"]["onset"] == 300 and images["im05"]["scores"] == {"100": None, "200": None, "300": 0.5,
                                                                           "400": 0.5}
    assert images["im10"]["onset"] is None and summary["first_reproducing"] == 200
    # 2% of 500 = 10 images. One-sided 95% upper bounds (scipy): 0 found of 300 -> 3, 2 -> 7, 4 -> 12, 3 -> 10:
    # step 300 breaks the policy, and step 400 within it again does not make the training safe after 300.
    one_sided = {s: max(d for d in range(len(f), 201 + len(f)) if hypergeom.cdf(len(f), 500, d, 300) > 0.05)
                 for s, f in plan.items()}
    assert one_sided == {s: rows[s]["upper_one_sided"] for s in plan} == {100: 3, 200: 7, 300: 12, 400: 10}
    assert summary["last_safe"] == 200 and "step 300 breaks it: up to 12 of 500 images" in summary["last_safe_why"]
    text = format_track(summary)
    assert "Onsets" in text and "im05" in text and "never reproduced: 296 image(s)" in text
    assert "last safe checkpoint (the upper bound within 2% at every checkpoint up to it, 95% one-sided): step 200" \
        in text


# --- the training monitor in a toy training loop -----------------------------------------------------------------

def test_the_monitor_in_a_training_loop_fires_logs_and_leaves_the_training_as_it_was(tmp_path, toy_model, toy_images):
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker
    from diffusers import UNet2DModel

    from invmm import TrainingMonitor, preset
    from invmm.data.images import ImageItem
    from invmm.zoo.digits import DigitsTrainConfig, build_scheduler, digits_uint8, to_model_space, train_denoiser

    class Recorder(GeneralTracker):  # an accelerate tracker that keeps what it is given
        name, requires_logging_directory, main_process_only = "recorder", False, False

        def __init__(self):
            super().__init__()
            self.logged = []

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            pass

        def log(self, values, step=None, **kwargs):
            self.logged.append((step, dict(values)))

    members = [ImageItem(i, str(p)) for i, (p, e) in toy_images.items() if e["copies"] == 64]
    others = [ImageItem(i, str(p)) for i, (p, e) in toy_images.items() if e["split"] == "heldout"]
    recorder = Recorder()
    accelerator = Accelerator(cpu=True, log_with=[recorder])
    accelerator.init_trackers("toy")
    # every check passes (threshold -1): the first InvMM call reproduces its probes and the limit (0) is crossed
    cfg = preset("ddpm", similarity="pixel", max_steps=2, check_every=2, sampler_steps=2, batch_size=2, threshold=-1.0,
                 map_samples=0)
    monitor = TrainingMonitor(toy_model, members, others, log_file=tmp_path / "monitor.jsonl", invmm_every=2, top=2,
                              config=cfg, accelerator=accelerator)
    train = DigitsTrainConfig(steps=4, batch_size=8, lr=1e-4, warmup_steps=1)
    data = to_model_space(digits_uint8()[:32]).unsqueeze(1)

    def trained(on_step):
        torch.manual_seed(0)
        unet = UNet2DModel.from_pretrained(toy_model / "unet", local_files_only=True)
        train_denoiser(unet, build_scheduler(train), data, train, torch.Generator().manual_seed(1), lambda _: None,
                       on_step=on_step(unet) if on_step else None)
        return unet

    checks, modes = [], []

    def watch(unet):
        def on_step(step):
            if step % 2 == 0:
                checks.append(monitor(step, accelerator.prepare(unet) if step == 2 else unet))
                modes.append((unet.training, all(p.requires_grad for p in unet.parameters())))
        return on_step

    watched, plain = trained(watch), trained(None)
    # The training went on as if unwatched: the same weights, bit for bit, and the model handed back training.
    for a, b in zip(watched.state_dict().values(), plain.state_dict().values()):  # a perturbed RNG or gradient
        assert_close_tensors(a, b)  # would move them far beyond float noise
    assert modes == [(True, True), (True, True)]
    first, second = checks
    assert first.crossed and bool(first) and "2 of 2 probes reproduced within 2 steps (limit 0)" in first.reasons[0]
    assert set(first.invmm["images"]) == {m.id for m in members} and second.invmm is None and not second.crossed
    # The signal: the 64-copy members' loss is below the held-out images' (a positive gap, AUC 1 on 2 vs 2).
    assert first.signal["gap"] > 0 and first.signal["auc"] == 1.0
    lines = [json.loads(line) for line in (tmp_path / "monitor.jsonl").read_text().splitlines()]
    assert [(d["step"], d["crossed"]) for d in lines] == [(2, True), (4, False)]
    assert [step for step, _ in recorder.logged] == [2, 4]
    assert recorder.logged[0][1]["invmm/reproduced"] == 2 and recorder.logged[0][1]["invmm/crossed"] == 1
    assert recorder.logged[1][1]["invmm/auc"] == 1.0 and "invmm/reproduced" not in recorder.logged[1][1]


def test_track_applies_repeats_the_refinement_early_stop_a_mask_and_a_sample_at_every_checkpoint(tmp_path, tiny_model,
                                                                                             four_images):
    import numpy as np

    train = tmp_path / "train"
    _perturbed_unet(tiny_model, train / "checkpoint-5", 5)
    side = Image.open(four_images.parent / "img0.png").size[0]
    left = np.zeros((side, side), np.uint8)
    left[:, : side // 2] = 255
    Image.fromarray(left).save(tmp_path / "left.png")
    out = tmp_path / "t"
    res = runner.invoke(app, ["track", str(train), str(four_images), "--out", str(out), "--base", str(tiny_model),
                              "--final", str(tiny_model), "--repeats", "2", "--refine", "--refine-samples", "8",
                              "--early-stop", "--mask", str(tmp_path / "left.png"), "--sample", "3", *FAST])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "track.json").read_text())
    for r in summary["checkpoints"]:  # a sample of 3 of the 4: hypergeometric bounds around 3 found, none certain
        info = json.loads((out / f"step-{r['step']}" / "run.json").read_text())
        assert info["repeats"] == 2 and info["config"]["refine"] and info["config"]["early_stop"]
        assert info["mask"]["path"] == str(tmp_path / "left.png") and info["design"]["sample"]["m"] == 3
        assert (r["reproduced"], r["n"], r["lower"], r["upper"]) == (3, 3, 3, 4)
        assert r["median_refined"] is not None
        lines = [json.loads(line) for line in (out / f"step-{r['step']}" / "results.jsonl").read_text().splitlines()]
        assert len(lines) == 6 and all(d["mask"]["source"] == "option" for d in lines)
