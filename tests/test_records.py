import json
import math

import pytest

from invmm.config import PRESETS, InvMMConfig, preset
from invmm.errors import InvMMInputError
from invmm.records import InversionRecord
from invmm.store.files import Ledger


def test_inf_survives_json():
    r = InversionRecord(id="a", path="a.png", score=math.inf, success=False, steps=2000)
    text = json.dumps(r.to_json(), allow_nan=False)
    d = json.loads(text)
    assert d["score"] is None and d["score_is_inf"] is True
    assert math.isinf(InversionRecord.from_json(d).score)
    line = InversionRecord(id="b", path="b", score=0.25, success=True).to_json()
    ok = InversionRecord.from_json(json.loads(json.dumps(line)))
    assert ok.score == 0.25 and ok.success
    err = InversionRecord.from_json(InversionRecord(id="c", path="c", status="error", error="bad").to_json())
    assert math.isnan(err.score) and err.status == "error"


def test_class_fields_only_on_class_conditional_lines():
    plain = InversionRecord(id="a", path="a.png", score=0.5, success=True).to_json()
    assert not {"class_mode", "class_label", "class_name"} & set(plain)
    line = InversionRecord(id="b", path="b.png", class_mode="inverted", class_label=7, class_name="seven").to_json()
    back = InversionRecord.from_json(json.loads(json.dumps(line)))
    assert (back.class_mode, back.class_label, back.class_name) == ("inverted", 7, "seven")
    assert InversionRecord.from_json(json.loads(json.dumps(plain))).class_mode is None


def test_presets_are_data_and_round_trip():
    ddpm = preset("ddpm")
    assert (ddpm.lr, ddpm.batch_size, ddpm.max_steps, ddpm.check_every, ddpm.delta, ddpm.xi) == (
        0.1, 32, 2000, 50, 1e-4, 1e-3)
    assert (ddpm.window, ddpm.n_check_samples, ddpm.sampler_steps, ddpm.eta, ddpm.beta) == (100, 8, 200, 0.0, 0.5)
    ldm = preset("ldm")
    assert (ldm.check_every, ldm.delta, ldm.batch_size, ldm.sampler_steps) == (10, 5e-4, 16, 50)
    sd = preset("sd")
    assert (sd.delta, sd.batch_size, sd.sampler_steps, sd.guidance_scales) == (1e-3, 16, 50, [1, 2, 3, 4, 5, 6, 7])
    assert InvMMConfig.from_json(json.loads(json.dumps(sd.to_json()))) == sd
    # The families the paper does not set take their nearest paper preset's numbers (README, "Why these presets").
    assert PRESETS["sdxl"] == PRESETS["sd"]
    assert PRESETS["pixart"] == PRESETS["sd"]
    assert {k: v for k, v in PRESETS["flux"].items() if k != "guidance_scales"} == \
        {k: v for k, v in PRESETS["sd3"].items() if k != "guidance_scales"}
    assert {k: v for k, v in PRESETS["dit"].items() if k != "guidance_scales"} == PRESETS["ldm"]
    assert preset("flux-schnell").guidance_scales == [1.0] and preset("dit").guidance_scales == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="unknown preset"):
        preset("sdxl-turbo")
    with pytest.raises(ValueError, match="batch_size"):
        InvMMConfig(batch_size=0)


def test_ledger_refuses_an_existing_run_and_ignores_a_torn_tail(tmp_path):
    ledger = Ledger.create(tmp_path / "run", {"x": 1})
    ledger.append(InversionRecord(id="a", path="a", score=0.5, success=True))
    ledger.append(InversionRecord(id="b", path="b"))
    with open(ledger.path, "a") as f:
        f.write('{"id": "c", "sco')  # a crash mid-write
    assert [r.id for r in ledger.read()] == ["a", "b"]
    with pytest.raises(InvMMInputError, match="already holds a run"):
        Ledger.create(tmp_path / "run", {"x": 2})
    assert json.loads((tmp_path / "run" / "run.json").read_text()) == {"x": 1}
