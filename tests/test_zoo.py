import torch
from safetensors.torch import load_file

from invmm.data.checkpoints import discover
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
    cfg.checkpoint_every = 1  # saving checkpoints leaves the training as it was
    train_digits(cfg, tmp_path / "b", log=lambda *_: None)
    # checkpoint-N/unet/ beside the final pipeline, as diffusers' train_unconditional.py writes them
    found = discover(tmp_path / "b", final=tmp_path / "b", final_step=3)
    assert [(c.step, c.kind, c.denoiser) for c in found] == [(1, "denoiser", "unet"), (2, "denoiser", "unet"),
                                                             (3, "pipeline", None)]
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


def test_text_to_image_toy_trains_and_loads_as_pixel_space_text2image(tmp_path):
    from invmm.families import load_adapter
    from invmm.zoo.digits_t2i import DigitsT2IConfig, train_digits_t2i

    cfg = DigitsT2IConfig(seed=2, steps=2, batch_size=4, block_out_channels=(8, 16, 16), levels={4: 2, 1: 3},
                          n_heldout=2)
    m = train_digits_t2i(cfg, tmp_path / "t2i", log=lambda *_: None)
    assert all(e["caption"].startswith("a handwritten ") for e in m["images"])
    adapter = load_adapter(str(tmp_path / "t2i"))
    assert adapter.family == "sd" and adapter.vae is None and adapter.image_mode == "L"
    assert adapter.max_length == cfg.max_length and adapter.n_soft_tokens == cfg.max_length - 2
    x0 = adapter.encode(torch.zeros(1, 1, 8, 8))
    assert torch.equal(x0, torch.zeros(1, 1, 8, 8))  # pixel space: no VAE in between


def test_class_conditional_toy_trains_exports_and_audits_with_its_classes(tmp_path):
    """A few steps of the toy DiT: it loads as the class family, classes are the digits, and the exported manifest's
    class column conditions an audit (known class for every image)."""
    import json

    from typer.testing import CliRunner

    from invmm.cli import app
    from invmm.families import load_adapter
    from invmm.zoo.digits_dit import DigitsDiTConfig, train_digits_dit
    from invmm.zoo.digits_t2i import digit_labels

    cfg = DigitsDiTConfig(seed=2, steps=2, batch_size=4, levels={4: 1}, n_heldout=1, num_layers=1,
                          attention_head_dim=8, checkpoint_every=1)
    m = train_digits_dit(cfg, tmp_path / "dit", log=lambda *_: None)
    assert (tmp_path / "dit" / "checkpoint-1" / "transformer" / "config.json").is_file()
    labels = digit_labels()
    assert [e["class"] for e in m["images"]] == [int(labels[e["source_index"]]) for e in m["images"]]
    adapter = load_adapter(str(tmp_path / "dit"))
    assert adapter.family == "dit" and adapter.num_classes == 10 and adapter.vae is None
    assert adapter.class_id("seven") == 7 and adapter.denoiser.config.out_channels == 2  # learned sigma
    res = CliRunner().invoke(app, ["zoo", "export-digits", "--model", str(tmp_path / "dit"), "--out",
                                   str(tmp_path / "data")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["audit", str(tmp_path / "dit"), str(tmp_path / "data" / "manifest.csv"), "--out",
                                   str(tmp_path / "run"), "--max-steps", "2", "--check-every", "2", "--batch-size",
                                   "2", "--sampler-steps", "2"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(s) for s in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert {d["id"]: d["class_label"] for d in lines} == {e["id"]: e["class"] for e in m["images"]}
    assert {d["class_mode"] for d in lines} == {"known"}
