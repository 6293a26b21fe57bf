"""Class-conditional DiT: its numerical path against diffusers' own (DDIMScheduler, DiTPipeline), class inversion,
and the class from a manifest or --class-label through a whole run."""

import json

import pytest
import torch

from invmm.families import load_adapter
from invmm.families.dit import DiTAdapter
from invmm.functional import reparameterize
from invmm.inversion.conditioning import KnownClass, SoftClass


@pytest.fixture(scope="module")
def dit_model(tiny_family):
    return tiny_family("dit")


@pytest.fixture(scope="module")
def dit(dit_model):
    return load_adapter(str(dit_model))


def test_detected_with_its_classes(dit):
    assert isinstance(dit, DiTAdapter) and dit.family == "dit"
    assert (dit.num_classes, dit.null_class, dit.image_size, dit.latent_shape) == (1000, 1000, 16, (4, 8, 8))
    assert len(dit.label_tables) == 2  # one per transformer block
    # Classes by index or by any of their id2label names (case-insensitive), as DiTPipeline.get_label_ids reads them.
    assert [dit.class_id(c) for c in ("7", 7, "goldfish", "Carassius auratus", "tench")] == [7, 7, 1, 1, 0]
    for bad in ("1000", "-1", "dragon"):
        with pytest.raises(ValueError, match="class"):
            dit.class_id(bad)


def test_known_class_feeds_every_block_its_table_row(dit):
    """The one-hot conditioning equals the model called with integer labels, the way DiTPipeline calls it."""
    x = torch.randn(3, *dit.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([3, 40, 99])
    with torch.no_grad():
        ours = dit._model_output(x, t, dit.prompt_embeddings(["goldfish", "7", ""]))
        ref = dit.denoiser(x, t, class_labels=torch.tensor([1, 7, 1000])).sample[:, :4]
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_x0_uses_the_mean_channels_as_ddim_does(dit):
    """x0 from the learned-sigma output equals DDIMScheduler.step's pred_original_sample on the eps channels."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(dit.scheduler_config, clip_sample=False)  # InvMM never clips x0
    sched.set_timesteps(10)
    t = sched.timesteps[2]
    x = torch.randn(2, *dit.latent_shape, generator=torch.Generator().manual_seed(1))
    cond = dit.prompt_embeddings(["3", "5"])
    with torch.no_grad():
        out = dit.denoiser(x, t.expand(2), class_labels=torch.tensor([3, 5])).sample
        assert out.shape[1] == 8  # [eps, variance]
        ref = sched.step(out[:, :4], t, x).pred_original_sample
        torch.testing.assert_close(dit.predict_x0(x, t.expand(2), cond), ref, rtol=1e-5, atol=1e-5)


def test_generate_equals_dit_pipeline_with_guidance(dit_model, dit):
    from diffusers import DiTPipeline

    pipe = DiTPipeline.from_pretrained(dit_model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_labels=[1, 7], guidance_scale=3.0, num_inference_steps=3,
               generator=torch.Generator().manual_seed(0), output_type="pt").images  # [0, 1], NHWC or NCHW
    out = torch.as_tensor(out)
    if out.shape[-1] == 3:
        out = out.permute(0, 3, 1, 2)
    noise = torch.randn(2, *dit.latent_shape, generator=torch.Generator().manual_seed(0))
    ours = dit.generate(noise, steps=3, cond=dit.prompt_embeddings(["1", "7"]), guidance=3.0, schedule="model")
    torch.testing.assert_close(ours, out * 2 - 1, rtol=1e-4, atol=1e-4)


def test_class_inversion_gets_gradients_and_decodes_its_class(dit):
    soft = SoftClass(dit, tau=2.0, seed=3)
    x0 = dit.encode(torch.zeros(1, 3, 16, 16))
    mu = torch.zeros_like(x0, requires_grad=True)
    logvar = torch.zeros_like(x0, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    eps = torch.randn((2, *x0.shape[1:]), generator=g)
    z = reparameterize(mu, logvar, eps)
    t = torch.tensor([10, 60])
    cond = soft.sample(2, g)
    # Draws are distributions over the real classes; the null class gets no mass.
    assert cond.shape == (2, 1001) and torch.allclose(cond.sum(1), torch.ones(2)) and (cond[:, -1] == 0).all()
    loss = (dit.predict_x0(dit.add_noise(z, torch.randn(z.shape, generator=g), t), t, cond) - x0).pow(2).mean()
    loss.backward()
    for p in (mu, logvar, soft.logits):
        assert p.grad is not None and p.grad.abs().sum() > 0
    with torch.no_grad():
        soft.logits[42] = 5.0
    assert soft.describe() == {"class_mode": "inverted", "class_label": 42, "class_name": "class 42"}
    assert KnownClass(dit, "tench").describe() == {"class_mode": "known", "class_label": 0,
                                                   "class_name": "tench, Tinca tinca"}


def _cli(*args):
    from typer.testing import CliRunner

    from invmm.cli import app

    return CliRunner().invoke(app, [*map(str, args), "--max-steps", "4", "--check-every", "2", "--batch-size", "2",
                                    "--sampler-steps", "2", "--similarity", "pixel"])


def _png(path, rgb):
    from PIL import Image

    Image.new("RGB", (16, 16), rgb).save(path)
    return path


def test_measure_known_class_and_inverted(dit_model, tmp_path):
    png = _png(tmp_path / "red.png", (200, 30, 30))
    res = _cli("measure", dit_model, png, "--class-label", "goldfish", "--out", tmp_path / "known")
    assert res.exit_code == 0, res.output
    (line,) = [json.loads(s) for s in (tmp_path / "known" / "results.jsonl").read_text().splitlines()]
    assert (line["class_mode"], line["class_label"], line["class_name"]) == ("known", 1, "goldfish, Carassius auratus")
    assert line["status"] == "ok" and line["steps"] in (2, 4)
    res = _cli("measure", dit_model, png, "--out", tmp_path / "inverted")
    assert res.exit_code == 0, res.output
    (line,) = [json.loads(s) for s in (tmp_path / "inverted" / "results.jsonl").read_text().splitlines()]
    assert line["class_mode"] == "inverted" and 0 <= line["class_label"] < 1000


def test_audit_reads_the_class_column_and_fails_only_an_unknown_class(dit_model, tmp_path):
    a, b = _png(tmp_path / "a.png", (10, 200, 10)), _png(tmp_path / "b.png", (10, 10, 200))
    (tmp_path / "data.csv").write_text(f"path,class\n{a.name},7\n{b.name},dragon\n")
    res = _cli("audit", dit_model, tmp_path / "data.csv", "--out", tmp_path / "run")
    assert res.exit_code == 2, res.output  # an unusable input image
    lines = {d["id"]: d for d in map(json.loads, (tmp_path / "run" / "results.jsonl").read_text().splitlines())}
    assert lines["a.png"]["status"] == "ok" and lines["a.png"]["class_label"] == 7
    assert lines["b.png"]["status"] == "error" and "'dragon'" in lines["b.png"]["error"]
    assert "b.png" in lines["b.png"]["error"]
