"""Inference-time memorization mitigations, as options of every generation path (`--mitigation NAME[:key=value]`).

Each mitigation is a file (base.py says what they share); install() puts them on a loaded model so that everything
that generates through `adapter.generate` (the success check, the refinement's samples, the memorization map, the
early stop's examination, generate_compare) generates mitigated, while the inversion's own optimisation sees the
model as it is: the question asked is whether an attacker who searches the noise of the unmitigated model still
reproduces the image through the mitigated sampler.
"""

from __future__ import annotations

import contextlib
import dataclasses

from invmm.errors import InvMMInputError
from invmm.families import load_adapter
from invmm.mitigations.attention_scale import AttentionScale
from invmm.mitigations.base import GenerationCall, Mitigation, MitigationError, row_digest, sequence
from invmm.mitigations.embedding_noise import EmbeddingNoise
from invmm.mitigations.guidance_delay import GuidanceDelay
from invmm.mitigations.prompt_adjust import PromptAdjust
from invmm.mitigations.random_tokens import RandomTokens
from invmm.spec import parse_spec

MITIGATIONS: dict[str, type[Mitigation]] = {
    cls.name: cls for cls in (GuidanceDelay, EmbeddingNoise, RandomTokens, PromptAdjust, AttentionScale)}
NONE = "none"  # the model as it is (mitigation-eval's baseline)


def parse_mitigation(spec: str) -> Mitigation | None:
    """"guidance-delay" or "guidance-delay:mode=dynamic" -> the mitigation with those settings; "none" -> None."""
    try:
        name, options = parse_spec(spec)
    except ValueError as exc:
        raise MitigationError(f"--mitigation {spec!r}: {exc}") from None
    if name == NONE and not options:
        return None
    if name not in MITIGATIONS:
        raise MitigationError(f"--mitigation {spec!r}: unknown mitigation {name!r}; available: "
                              f"{', '.join(MITIGATIONS)} (or none)")
    try:
        return MITIGATIONS[name](**options)
    except TypeError:
        fields = ", ".join(f.name for f in dataclasses.fields(MITIGATIONS[name]))
        raise MitigationError(f"--mitigation {spec!r}: unknown setting; {name} takes {fields}") from None


def build_mitigations(specs, adapter) -> list[Mitigation]:
    """The mitigations of `specs` (strings, dicts as run.json records them, or Mitigations), each checked against
    the model: one that has no meaning on it is refused with the reason."""
    out = []
    for spec in specs or []:
        m = spec if isinstance(spec, Mitigation) else (
            parse_mitigation(spec) if isinstance(spec, str) else MITIGATIONS[spec["name"]](
                **{k: v for k, v in spec.items() if k != "name"}))
        if m is None:
            continue
        why = m.refuse(adapter)
        if why:
            raise MitigationError(f"--mitigation {m.name} does not apply to this model: {why}")
        if any(type(o) is type(m) for o in out):
            raise MitigationError(f"--mitigation {m.name} given twice; give each mitigation once")
        out.append(m)
    return out


def install(adapter, mitigations: list[Mitigation]):
    """Make `adapter` generate under `mitigations` (in the order given); records them as adapter.mitigations."""
    adapter.mitigations = tuple(m.to_json() for m in mitigations)
    if not mitigations:
        return adapter
    generate, guided, pair = adapter.generate, adapter.guided_output, adapter.guidance_pair
    uncond_fn, prompt_fn = adapter.unconditional_rows, adapter.prompt_embeddings
    captions: dict[str, str] = {}  # the digest of an encoded caption's embedding -> the caption

    def prompt_embeddings(texts, **size):
        out = prompt_fn(texts, **size)
        for text, row in zip(texts, sequence(out)):
            captions[row_digest(row)] = text
        return out

    def mitigated(noise, *, steps, eta=0.0, cond=None, guidance=1.0, generator=None, schedule="model"):
        if cond is None:
            return generate(noise, steps=steps, eta=eta, cond=cond, guidance=guidance, generator=generator,
                            schedule=schedule)
        call = GenerationCall(adapter, noise, cond, guidance, steps, schedule, plain=guided, pair=pair)
        call.texts = [captions.get(row_digest(r)) for r in sequence(cond)]

        def step(x, t, c, g):
            for m in mitigations:
                out = m.guide(call, x, t, c, g, guided)
                if out is not None:
                    return out
            return guided(x, t, c, g)

        def uncond(c, n):  # every guided pass of the call takes the unconditional rows a mitigation changed
            return call.uncond if call.uncond is not None and n == len(call.noise) else uncond_fn(c, n)

        adapter.guided_output, adapter.unconditional_rows = step, uncond
        try:
            for m in mitigations:
                m.prepare(call)
            with contextlib.ExitStack() as stack:
                for m in mitigations:
                    stack.enter_context(m.attention(call))
                return generate(noise, steps=steps, eta=eta, cond=call.cond, guidance=guidance, generator=generator,
                                schedule=schedule)
        finally:
            del adapter.guided_output, adapter.unconditional_rows

    adapter.generate, adapter.prompt_embeddings = mitigated, prompt_embeddings
    return adapter


def load_mitigated(model: str, *, mitigations=(), **load) -> object:
    """load_adapter(model, **load) generating under `mitigations` (specs, or their dicts as run.json and
    families.load_options record them); one that does not apply is an input error saying why."""
    adapter = load_adapter(model, **load)
    try:
        return install(adapter, build_mitigations(list(mitigations or []), adapter))
    except MitigationError as exc:
        raise InvMMInputError(str(exc)) from None


__all__ = ["MITIGATIONS", "Mitigation", "MitigationError", "build_mitigations", "install", "load_mitigated",
           "parse_mitigation"]
