import json
import shutil

import pytest

from invmm.errors import InvMMInputError
from invmm.families import load_adapter
from invmm.zoo.tiny import build_tiny_pixel


def test_loads_offline_and_reads_the_schedule_from_config(tiny_model):
    from diffusers import DDPMScheduler

    a = load_adapter(str(tiny_model))
    ref = DDPMScheduler.from_pretrained(tiny_model / "scheduler").alphas_cumprod
    assert a.num_train_timesteps == 100 and a.image_mode == "L" and a.image_size == 8
    assert (a.alphas_cumprod - ref).abs().max().item() < 1e-7


def test_pickle_weights_are_refused_unless_allowed(tmp_path):
    model = build_tiny_pixel(tmp_path / "pickled", safe=False)
    assert not list((model / "unet").glob("*.safetensors"))
    with pytest.raises(InvMMInputError, match="--allow-pickle"):
        load_adapter(str(model))
    assert load_adapter(str(model), allow_pickle=True).image_size == 8


def test_missing_scheduler_and_wrong_family_are_explained(tmp_path, tiny_model):
    broken = tmp_path / "noscheduler"
    shutil.copytree(tiny_model, broken)
    shutil.rmtree(broken / "scheduler")
    with pytest.raises(InvMMInputError, match="no scheduler"):
        load_adapter(str(broken))

    other = tmp_path / "cond"
    shutil.copytree(tiny_model, other)
    cfg = json.loads((other / "unet" / "config.json").read_text())
    cfg["_class_name"] = "UNet2DConditionModel"
    (other / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvMMInputError, match="UNet2DConditionModel"):
        load_adapter(str(other))


def test_a_name_that_is_not_a_folder_needs_hub(tmp_path):
    with pytest.raises(InvMMInputError, match="--hub"):
        load_adapter("google/ddpm-cifar10-32")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(InvMMInputError, match="is a file"):
        load_adapter(str(f))
