"""Every tensor an adapter, the inversion or a scorer creates lands on the model's device, proven without a GPU:
the model sits on the CPU while the default device is "meta", so a tensor created without an explicit device is
a meta tensor, and the first operation that meets it with a real one fails loudly.

What this found and how it was fixed:
- random draws (`torch.randn(..., generator=g)`) and index tensors (`torch.full`, `torch.tensor`, `arange`) made
  without a device: draws are now made on their generator's device (the CPU, so that a seed gives the same
  numbers on every device) and moved, index tensors made on the model's device;
- transformers' tokenizers, whose `return_tensors="pt"` makes the ids on the default device: the ids are now
  made on the model's device from the tokenizer's lists (adapters/text2image.tokenize);
- diffusers' schedulers, which create their tables (betas, alpha_bar, sigmas) on the default device when
  constructed: they are now constructed once, when the model is loaded, and every check steps with a copy
  (pixel.DDPMAdapter.sampler, flow.FlowMatching._euler), so that call stays out of any later scope. Nothing
  else of diffusers' that a run calls (the denoisers' forward passes, the schedulers' set_timesteps and step)
  creates a tensor on the default device."""

import math

import pytest
import torch
from families import FAMILIES, SMALL_SCORERS, given, images

from invmm.config import default_config
from invmm.families import load_adapter
from invmm.families.base import CLASS, TEXT
from invmm.inversion import Inverter, Target
from invmm.scorers import SCORERS, build_scorer
from invmm.similarity import PixelSimilarity


@pytest.fixture(scope="module", params=list(FAMILIES))
def adapter(request, tiny_family):
    return load_adapter(str(tiny_family(request.param)))


def _targets(adapter):
    x = images(adapter)
    known = [given(adapter, 0), None]
    return [Target(id=f"img-{i}", pixels=x[i], caption=known[i] if TEXT in adapter.capabilities else None,
                   class_label=known[i] if CLASS in adapter.capabilities else None) for i in range(2)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_inversion_and_every_scorer_create_nothing_on_the_default_device(adapter, precision):
    cfg = default_config(adapter, similarity="pixel", threshold=-1.0, batch_size=2, max_steps=2, check_every=2,
                         sampler_steps=2, precision=precision, refine=True, refine_samples=8,
                         **({"guidance_scales": [1.0, 2.0]} if adapter.conditional else {}))
    x = images(adapter)
    conds = [given(adapter, 0), given(adapter, 1)]
    scorers = [build_scorer(SMALL_SCORERS[name], adapter) for name in SCORERS
               if not SCORERS[name].missing(adapter) and name != "invmm"]
    targets = _targets(adapter)
    with torch.device("meta"):
        results = [o.result for o in Inverter(adapter, cfg, PixelSimilarity(), batch_images=2).run(targets)]
        scores = {s.name: s.score(x, ["a", "b"], conds if adapter.conditional else None, seed=0) for s in scorers}
    assert all(r.status == "ok" and r.success and math.isfinite(r.score) for r in results), results
    assert all(r.refined_score == pytest.approx(r.score, rel=1e-9) for r in results)  # every check passes: the first
    assert all(math.isfinite(v) for values in scores.values() for v in values), scores


def test_the_meta_scope_catches_a_tensor_made_without_a_device(tiny_family):
    """The control: a scorer step that makes its timesteps without a device fails inside the scope."""
    adapter = load_adapter(str(tiny_family("ddpm")))
    x0 = adapter.encode(images(adapter))
    with torch.device("meta"), pytest.raises((RuntimeError, NotImplementedError)):
        t = torch.full((len(x0),), 10, dtype=torch.long)  # no device: a meta tensor
        float(adapter.eps_prediction(x0, t).sum())
