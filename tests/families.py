"""What the suites over every family share: the tiny pipelines (each family's `tiny_variants`, read from the
registry: a new family's module brings its own and every suite runs on it), small scorer settings, test images
and their known conditionings."""

from __future__ import annotations

import torch

from invmm.families import CLASS, TEXT, tiny_variants

FAMILIES = tiny_variants()  # variant name -> (its family, the tiny builder's arguments)
# The layers a test LoRA adapts, per family with a LoRA format.
LORA_TARGETS = {"ddpm": ["conv1", "conv2"], "ldm": ["conv1", "conv2"],
                "sd": ["to_q", "to_k", "to_v", "to_out.0"], "sd3": ["to_q", "to_k", "to_v"],
                "sdxl": ["to_q", "to_k", "to_v", "to_out.0"], "flux": ["to_q", "to_k", "to_v"]}


def real_schedule(name: str) -> dict:
    """The builder arguments that give FAMILIES[name] a real model's 1,000 training timesteps (the flow-matching,
    PixArt and DiT builders' schedules already have them or take none)."""
    fam, _ = FAMILIES[name]
    return {"train_timesteps": 1000} if "train_timesteps" in fam.tiny.__kwdefaults__ else {}


# The tiny models have 100 training timesteps: the scorers' defaults (made for 1000) would be refused as out of
# range, and their sample counts are cut so that a cell of the family x scorer matrix takes well under a second.
SMALL_SCORERS = {
    "invmm": "invmm:sampler_steps=2,max_steps=2,check_every=2,batch_size=2,similarity=\"pixel\"",
    "loss": "loss:t=10,n_draws=2",
    "secmi": "secmi:t_sec=10,stride=2",
    "pia": "pia:t=20",
    "sima": "sima:t=10",
    "clid": "clid:t_mid=45,t_interval=1",
    "generate_compare": "generate_compare:n_samples=2,sampler_steps=2",
    "noise_norm": "noise_norm:n_generations=2,sampler_steps=4",
    "anisotropy": "anisotropy:sampler_steps=4",
    "sharpness": "sharpness:sampler_steps=4",
}


def images(adapter, n: int = 2, seed: int = 0) -> torch.Tensor:
    """n random images in [-1, 1] as the adapter takes them."""
    c = 1 if adapter.image_mode == "L" else 3
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, adapter.image_size, adapter.image_size, generator=g) * 2 - 1


def given(adapter, i: int = 0):
    """A known conditioning of image i: a caption, or a class (by name and by index); None if unconditional."""
    if CLASS in adapter.capabilities:
        return ["goldfish", "7"][i % 2]
    return ["a red square", "a blue circle"][i % 2] if TEXT in adapter.capabilities else None


def make_lora(model_dir, out, seed=0, targets=None):
    """A random (non-zero) LoRA for the model in `model_dir`, written as its family reads it."""
    from peft import LoraConfig, inject_adapter_in_model

    from invmm.families import family, load_adapter
    from invmm.families.lora import save_lora
    from invmm.families.registry import lora_components

    adapter = load_adapter(str(model_dir))
    torch.manual_seed(seed)
    comps = lora_components(adapter)
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=targets or LORA_TARGETS[adapter.family],
                                       init_lora_weights=False), comps["denoiser"])
    return save_lora(family(adapter.family), comps, out)
