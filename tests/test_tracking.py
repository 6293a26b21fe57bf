"""Checkpoint discovery (data/checkpoints.py) and the onset logic (analysis/tracking.py): the groundwork of tracking
memorization over training."""

import json

import pytest

from invmm.analysis.tracking import CheckpointOutcome, last_safe, onsets
from invmm.data.checkpoints import discover
from invmm.errors import InvMMInputError


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
