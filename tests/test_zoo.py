import torch
from safetensors.torch import load_file

from invmm.zoo.digits import DigitsTrainConfig, load_manifest, plan_dataset, train_digits


def test_plan_is_a_function_of_the_seed():
    cfg = DigitsTrainConfig(seed=0)
    plan = plan_dataset(cfg)
    assert plan == plan_dataset(DigitsTrainConfig(seed=0))
    assert plan != plan_dataset(DigitsTrainConfig(seed=1))
    sources = [e["source_index"] for e in plan]
    assert len(sources) == len(set(sources))  # no image is both trained on and held out
    counts = {}
    for e in plan:
        counts[e["copies"]] = counts.get(e["copies"], 0) + 1
    assert counts == {64: 8, 16: 8, 4: 8, 1: 200, 0: 200}


def test_training_is_reproducible_from_the_seed(tmp_path):
    cfg = DigitsTrainConfig(seed=5, steps=3, batch_size=8, block_out_channels=(8, 16), levels={4: 2, 1: 3},
                            n_heldout=2)
    a = train_digits(cfg, tmp_path / "a", log=lambda *_: None)
    train_digits(cfg, tmp_path / "b", log=lambda *_: None)
    wa = load_file(tmp_path / "a" / "unet" / "diffusion_pytorch_model.safetensors")
    wb = load_file(tmp_path / "b" / "unet" / "diffusion_pytorch_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    m = load_manifest(tmp_path / "a")
    assert m["n_train_samples"] == 2 * 4 + 3 and len(m["images"]) == 7 and a["step"] == 3
    assert (tmp_path / "a" / "scheduler" / "scheduler_config.json").exists()


def test_shipped_model_and_manifest_agree(toy_model):
    m = load_manifest(toy_model)
    assert m["kind"] == "invmm-zoo-digits"
    assert {e["copies"] for e in m["images"]} == {0, 1, 4, 16, 64}
    assert (toy_model / "unet" / "diffusion_pytorch_model.safetensors").exists()
