"""LoRA adapters: loaded through diffusers/peft, scaled, fingerprinted, and refused clearly when they do not fit."""

import json

import pytest
import torch
from families import LORA_TARGETS as TARGETS
from families import make_lora
from same_results import assert_same_result
from typer.testing import CliRunner

from invmm.cli import app
from invmm.data.checkpoints import discover
from invmm.errors import InvMMInputError
from invmm.families import family, load_adapter
from invmm.families.lora import LoraSpec, lora_specs, save_lora
from invmm.families.registry import lora_components
from invmm.records import InversionRecord
from invmm.zoo.tiny import (
    build_tiny_dit,
    build_tiny_flux,
    build_tiny_ldm,
    build_tiny_pixel,
    build_tiny_sd,
    build_tiny_sd3,
    build_tiny_sdxl,
)

runner = CliRunner()
BUILDERS = {"ddpm": build_tiny_pixel, "ldm": build_tiny_ldm, "sd": build_tiny_sd, "sd3": build_tiny_sd3,
            "sdxl": build_tiny_sdxl, "flux": build_tiny_flux}


@pytest.fixture(scope="module", params=list(BUILDERS))
def family_model(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"lora-{request.param}")
    model = BUILDERS[request.param](root / "model")
    return model, make_lora(model, root / "lora")


def inputs(adapter):
    g = torch.Generator().manual_seed(1)
    x = torch.randn((2, *adapter.latent_shape), generator=g)
    t = adapter.sample_timesteps(2, g)
    cond = adapter.prompt_embeddings(["a red square"] * 2) if adapter.conditional else None
    return x, t, cond


def tensors(cond):
    return list(cond) if isinstance(cond, tuple) else [cond]


def test_a_lora_changes_the_denoiser_and_nothing_else_and_scale_0_is_the_base(family_model):
    model, lora = family_model
    base = load_adapter(str(model))
    tuned = load_adapter(str(model), loras=[LoraSpec(str(lora), 1.0)])
    off = load_adapter(str(model), loras=[LoraSpec(str(lora), 0.0)])
    x, t, cond = inputs(base)
    with torch.no_grad():
        y0, y1, y_off = (a.predict_x0(x, t, cond) for a in (base, tuned, off))
    assert (y1 - y0).abs().max() > 1e-3
    assert torch.equal(y_off, y0)
    # The LoRA holds denoiser layers only: the text encoders and the image codec are the base's.
    if base.conditional:
        for a, b in zip(tensors(base.prompt_embeddings(["a"])), tensors(tuned.prompt_embeddings(["a"]))):
            assert torch.equal(a, b)
    img = torch.rand(1, 1 if base.image_mode == "L" else 3, base.image_size, base.image_size) * 2 - 1
    assert torch.equal(base.encode(img), tuned.encode(img))
    assert tuned.describe()["loras"][0]["scale"] == 1.0 and "loras" not in base.describe()
    assert not any(p.requires_grad for p in lora_components(tuned)["denoiser"].parameters())
    # A whole (short) inversion at scale 0 is the base's (within the tolerance of any two runs: same_results).
    from invmm.config import default_config
    from invmm.inversion import Inverter, Target
    from invmm.similarity import PixelSimilarity

    cfg = default_config(base, similarity="pixel", threshold=1.5, max_steps=4, check_every=2, batch_size=2,
                         sampler_steps=2, guidance_scales=[1.0, 2.0])
    target = Target(id="x", pixels=img[0], caption="a red square" if base.conditional else None)
    r0, r_off = (Inverter(a, cfg, PixelSimilarity(), batch_images=1).run([target])[0].result for a in (base, off))
    assert_same_result(r0, r_off)


def test_only_the_targeted_layers_change(tmp_path):
    model = build_tiny_sd(tmp_path / "model")
    lora = make_lora(model, tmp_path / "lora", targets=["attn2.to_k", "attn2.to_v"])  # cross-attention only
    seen = {}

    def hook(name):
        def fn(module, args, output):
            seen.setdefault(name, []).append(output.detach().clone())
        return fn

    for adapter in (load_adapter(str(model)), load_adapter(str(model), loras=[LoraSpec(str(lora))])):
        unet = adapter.denoiser
        handles = [unet.conv_in.register_forward_hook(hook("conv_in")),
                   next(m for n, m in unet.named_modules() if n.endswith("attn1.to_q")).register_forward_hook(
                       hook("attn1.to_q")),
                   next(m for n, m in unet.named_modules() if n.endswith("attn2")).register_forward_hook(
                       hook("attn2"))]
        x, t, cond = inputs(adapter)
        with torch.no_grad():
            adapter.predict_x0(x, t, cond)
        for h in handles:
            h.remove()
    assert torch.equal(*seen["conv_in"]) and torch.equal(*seen["attn1.to_q"])  # before the LoRA: untouched
    assert (seen["attn2"][0] - seen["attn2"][1]).abs().max() > 1e-4


def test_bad_loras_are_refused_with_the_file_named(tmp_path, tiny_model):
    with pytest.raises(InvMMInputError, match="missing.safetensors: no such file"):
        load_adapter(str(tiny_model), loras=[LoraSpec(str(tmp_path / "missing.safetensors"))])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    (broken / "adapter_config.json").write_text("{}")
    with pytest.raises(InvMMInputError, match="broken"):
        load_adapter(str(tiny_model), loras=[LoraSpec(str(broken))])
    pickled = tmp_path / "lora.bin"
    pickled.write_bytes(b"x")
    with pytest.raises(InvMMInputError, match="pickle"):
        load_adapter(str(tiny_model), loras=[LoraSpec(str(pickled))])
    # A LoRA for another architecture: the SD UNet's attention LoRA onto the pixel UNet, and the reverse.
    sd = build_tiny_sd(tmp_path / "sd")
    with pytest.raises(InvMMInputError, match="sd-lora"):
        load_adapter(str(tiny_model), loras=[LoraSpec(str(make_lora(sd, tmp_path / "sd-lora")))])
    pixel_lora = make_lora(tiny_model, tmp_path / "px-lora")
    with pytest.raises(InvMMInputError, match="px-lora"):
        load_adapter(str(sd), loras=[LoraSpec(str(pixel_lora))])
    with pytest.raises(InvMMInputError, match="one per --lora"):
        lora_specs(["a", "b", "c"], [1.0, 0.5])
    # The families without a tested LoRA path say so, before touching the file.
    dit = build_tiny_dit(tmp_path / "dit")
    with pytest.raises(InvMMInputError, match="dit model is not supported"):
        load_adapter(str(dit), loras=[LoraSpec(str(pixel_lora))])


def test_audit_with_another_lora_is_refused_and_nothing_is_written(tmp_path, tiny_model, toy_images):
    data = tmp_path / "data"
    data.mkdir()
    for p, _ in list(toy_images.values())[:2]:
        (data / p.name).write_bytes(p.read_bytes())
    a, b = make_lora(tiny_model, tmp_path / "a", seed=0), make_lora(tiny_model, tmp_path / "b", seed=1)
    args = ["audit", str(tiny_model), str(data), "--out", str(tmp_path / "run"), "--similarity", "pixel",
            "--max-steps", "2", "--check-every", "2", "--sampler-steps", "2", "--batch-size", "2"]
    res = runner.invoke(app, [*args, "--lora", str(a.parent)])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["model"]["loras"][0]["sha256"] and info["model"]["loras"][0]["scale"] == 1.0
    before = (tmp_path / "run" / "results.jsonl").read_text()
    for extra in (["--lora", str(b.parent)], ["--lora", str(a.parent), "--lora-scale", "0.5"], []):
        res = runner.invoke(app, [*args, *extra])
        assert res.exit_code == 2 and "holds a run made differently" in res.output, extra
        assert "loras" in res.output
    assert (tmp_path / "run" / "results.jsonl").read_text() == before
    res = runner.invoke(app, [*args[:4], str(tmp_path / "run-bad"), *args[5:], "--lora", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "nope" in res.output and not (tmp_path / "run-bad").exists()


def fake_run(run_dir, scores, *, seed=0, max_steps=2000):
    """A run folder with the given per-image scores (inf = not reproduced), as an audit writes it."""
    import math

    from invmm.config import preset
    from invmm.store.files import Ledger

    info = {"kind": "audit", "config": preset("ddpm", seed=seed, max_steps=max_steps).to_json(),
            "model": {"resolution": 8, "scaling_factor": None}}
    ledger = Ledger.create(run_dir, info)
    for i, s in scores.items():
        ledger.append(InversionRecord(id=i, path=f"{i}.png", score=s, success=math.isfinite(s), steps=100))
    return run_dir


def test_compare_sorts_by_what_the_fine_tune_added_and_refuses_other_settings(tmp_path):
    import math

    from invmm.analysis.compare import compare_runs

    inf = math.inf
    base = fake_run(tmp_path / "base", {"a": inf, "b": 0.9, "c": 0.5, "d": inf, "e": 0.4, "f": inf, "g": 0.7})
    tuned = fake_run(tmp_path / "tuned", {"a": 0.6, "b": 0.3, "c": 0.8, "d": inf, "e": inf, "f": 0.2, "h": 0.1})
    c = compare_runs(base, tuned)
    assert [(r.id, r.verdict) for r in c.rows] == [
        ("f", "made reproducible"), ("a", "made reproducible"), ("b", "more memorized"), ("c", "less memorized"),
        ("e", "no longer reproduced"), ("d", "reproduced by neither")]
    assert c.rows[2].change == pytest.approx(-0.6) and c.rows[0].change == -inf
    assert (c.only_base, c.only_tuned) == (["g"], ["h"])
    res = runner.invoke(app, ["compare", str(base), str(tuned), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert "2 made reproducible" in res.output and (tmp_path / "cmp" / "compare.html").exists()
    lines = (tmp_path / "cmp" / "compare.csv").read_text().splitlines()
    assert lines[1].startswith("f,inf,0.2,-inf,made reproducible")
    other = fake_run(tmp_path / "other", {"a": 0.6}, max_steps=1000)
    res = runner.invoke(app, ["compare", str(base), str(other)])
    assert res.exit_code == 2 and "max_steps: 2000 -> 1000" in res.output
    res = runner.invoke(app, ["report", str(tuned), "--compare", str(base)])
    assert res.exit_code == 0, res.output
    assert "What the fine-tune added" in (tuned / "report" / "index.html").read_text()


def test_zoo_lora_plants_images_the_base_never_saw(tmp_path):
    from invmm.zoo import shipped_digits_t2i_model
    from invmm.zoo.digits import load_manifest

    out = tmp_path / "lora"
    res = runner.invoke(app, ["zoo", "train-lora", "--out", str(out), "--steps", "2", "--checkpoint-every", "1"])
    assert res.exit_code == 0, res.output
    # checkpoint-1/ as diffusers' LoRA scripts write it (the last step is the LoRA in OUT itself), read by `track`
    found = discover(out, final=out, final_step=2, base=shipped_digits_t2i_model())
    assert [(c.step, c.kind, c.path.name) for c in found] == [(1, "lora", "pytorch_lora_weights.safetensors"),
                                                              (2, "lora", "pytorch_lora_weights.safetensors")]
    manifest = load_manifest(out)
    base = {e["source_index"]: e for e in load_manifest(shipped_digits_t2i_model())["images"]}
    images = manifest["images"]
    assert all(base[e["source_index"]]["split"] == "heldout" for e in images)  # the base never trained on them
    assert [sum(e["copies"] == c for e in images) for c in (32, 1, 0)] == [8, 8, 16]
    assert len({e["caption"] for e in images}) == len(images)
    assert manifest["n_train_samples"] == 8 * 32 + 8
    base_adapter = load_adapter(str(shipped_digits_t2i_model()))
    tuned = load_adapter(str(shipped_digits_t2i_model()), loras=[LoraSpec(str(out))])
    x, t, cond = inputs(base_adapter)
    with torch.no_grad():
        assert (tuned.predict_x0(x, t, cond) - base_adapter.predict_x0(x, t, cond)).abs().max() > 0
    res = runner.invoke(app, ["zoo", "train-lora", "--out", str(out), "--steps", "2"])
    assert res.exit_code == 2 and "already holds a LoRA" in res.output


def test_the_shipped_lora_matches_its_plan_and_loads():
    from invmm.zoo import shipped_digits_lora, shipped_digits_t2i_model
    from invmm.zoo.digits import load_manifest
    from invmm.zoo.digits_lora import DigitsLoraConfig, plan_finetune

    manifest = load_manifest(shipped_digits_lora())
    cfg = DigitsLoraConfig(**{k: v for k, v in manifest["train_config"].items() if k != "num_train_timesteps"})
    assert manifest["images"] == plan_finetune(load_manifest(shipped_digits_t2i_model()), cfg)
    adapter = load_adapter(str(shipped_digits_t2i_model()), loras=[LoraSpec(str(shipped_digits_lora()))])
    assert adapter.describe()["loras"][0]["path"].endswith("pytorch_lora_weights.safetensors")


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "flux"])
def test_text_encoder_loras_load_into_their_encoders(tmp_path, name):
    """A LoRA that also trains the CLIP text encoder(s) changes the conditioning at scale 1 and not at scale 0."""
    from peft import LoraConfig, inject_adapter_in_model

    model = BUILDERS[name](tmp_path / "model")
    adapter = load_adapter(str(model))
    comps = lora_components(adapter)
    torch.manual_seed(0)
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=TARGETS[name], init_lora_weights=False),
                            comps["denoiser"])
    # Flux's second encoder is T5, which has no LoRA format: only CLIP-L is trained there.
    encoders = ["text_encoder"] + ([] if name in ("sd", "flux") else ["text_encoder_2"])
    for key in encoders:
        inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False), comps[key])
    lora = save_lora(family(name), comps, tmp_path / "lora")
    base = load_adapter(str(model))
    tuned = load_adapter(str(model), loras=[LoraSpec(str(lora), 1.0)])
    off = load_adapter(str(model), loras=[LoraSpec(str(lora), 0.0)])
    for key in encoders:
        assert _lora_count(lora_components(tuned)[key]) > 0, key
    with torch.no_grad():
        e0, e1, e_off = (tensors(a.prompt_embeddings(["a red square"])) for a in (base, tuned, off))
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(e0, e1))
    assert all(torch.equal(a, b) for a, b in zip(e0, e_off))


def _lora_count(module) -> int:
    return sum(1 for n, _ in module.named_parameters() if "lora_" in n)
