"""Class-conditional DiT (ImageNet DiT-XL/2 and the like): `DiTTransformer2DModel` + VAE (or pixels) + labels.

The forward process, x0 conversion and DDIM check are noise_schedule.py's (through the VAE codec, or in pixel
space).
DiT outputs [eps, variance] on channels (learned sigma); the mean channels are the prediction, as DiTPipeline
steps with them. Classifier-free guidance mixes the class with the null class, the extra row of the label
table that DiT's training label dropout used (index num_classes; DiTPipeline hard-codes 1000, ImageNet's).

A conditioning is a batch of distributions over the rows of the label table, [n, num_classes + 1]: a known
class is its one-hot row, the unconditional the null's, and class inversion a Gumbel-softmax draw over the
real classes. Every block of DiT has its own label table (in its adaptive norm); the model sees, in each, the
mixture of the table's rows under the distribution. For a one-hot row that is exactly the table lookup.
The distributions go in as the model's `class_labels` argument, which the label embeddings are taught to take
(integer labels keep their own path): gradient checkpointing then recomputes a block from the same inputs.
"""

from __future__ import annotations

import torch

from invmm.errors import InvMMInputError
from invmm.families import ldm
from invmm.families.base import CLASS, NOISE_SCHEDULE, Family, ModelFolder
from invmm.families.codecs import VAECodec
from invmm.families.loading import build, load_component, load_vae, no_vae_no_scale
from invmm.families.noise_schedule import NoiseScheduleAdapter
from invmm.zoo.tiny import build_tiny_dit


class DiTAdapter(NoiseScheduleAdapter):
    family = "dit"
    # No paper setting: as the `ldm` preset it takes (the authors' LDM code) and DiT's own training, one draw.
    vae_posterior = "sample"
    conditional = True
    capabilities = frozenset({NOISE_SCHEDULE, CLASS})
    # One Gumbel-softmax class draw per check, shared by its samples, as prompt inversion does for SD 1.x.
    check_prompt_draws = "shared"

    def __init__(self, transformer, vae, scheduler_config: dict, *, id2label: dict | None = None,
                 device: str | torch.device = "cpu", source: str = "", resolution: int | None = None,
                 vae_saved_config: dict | None = None, latent_scale: float | None = None):
        from diffusers.models.embeddings import LabelEmbedding

        codec = None  # without a VAE, pixel space (the zoo's toy DiT)
        if vae is not None:
            codec = VAECodec(vae, torch.device(device), saved_config=vae_saved_config, latent_scale=latent_scale,
                             posterior=self.vae_posterior)
        super().__init__(transformer, scheduler_config, device=device, source=source, resolution=resolution,
                         codec=codec)
        embedders = [m for m in self.denoiser.modules() if isinstance(m, LabelEmbedding)]
        self.label_tables = [m.embedding_table for m in embedders]
        for m in embedders:
            _take_distributions(m)
        if not self.label_tables:
            raise ValueError(f"{type(self.denoiser).__name__} has no class-label embedding; not a class-conditional "
                             "DiT")
        self.num_classes = int(self.denoiser.config.num_embeds_ada_norm)
        rows = {int(t.weight.shape[0]) for t in self.label_tables}
        if rows != {self.num_classes + 1}:
            raise ValueError(f"the label tables have {sorted(rows)} rows; a DiT trained with label dropout has "
                             f"num_classes + 1 = {self.num_classes + 1} (the last: the null class guidance needs)")
        self.null_class = self.num_classes
        self.id2label = {int(k): str(v) for k, v in (id2label or {}).items()}
        # Every comma-separated name of a class, as DiTPipeline.get_label_ids reads id2label.
        self.label2id = {name.strip().lower(): k for k, v in self.id2label.items() for name in v.split(",")}
        self._uncond = self.one_hot([self.null_class])

    def _side_step(self) -> int:
        return int(self.denoiser.config.patch_size)

    # --- conditioning ---
    def class_id(self, label) -> int:
        """A class given as its index ("207", 207) or one of its names in id2label ("golden retriever")."""
        text = str(label).strip()
        if text.lstrip("-").isdigit():
            k = int(text)
            if 0 <= k < self.num_classes:
                return k
            raise ValueError(f"class {k} is out of range: the model has classes 0..{self.num_classes - 1}")
        if text.lower() in self.label2id:
            return self.label2id[text.lower()]
        raise ValueError(f"class {text!r} is neither an index 0..{self.num_classes - 1} nor a class name of the "
                         "model (its model_index.json id2label)" + ("" if self.id2label else "; it has none"))

    def class_name(self, k: int) -> str | None:
        return self.id2label.get(k)

    def one_hot(self, ids: list[int]) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor(ids, device=self.device),
                                           self.num_classes + 1).to(torch.float32)

    def prompt_embeddings(self, labels: list) -> torch.Tensor:
        """The conditioning of per-image classes (the contract's name; "" or None: the null class)."""
        return self.one_hot([self.null_class if label in (None, "") else self.class_id(label) for label in labels])

    def uncond_embeddings(self, n: int) -> torch.Tensor:
        return self._uncond.expand(n, -1)

    def soft_class_conditioning(self, probs: torch.Tensor) -> torch.Tensor:
        """[n, num_classes] class distributions -> conditionings (the null class gets no mass)."""
        return torch.nn.functional.pad(probs, (0, 1))

    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            cond = self.uncond_embeddings(len(x_t))
        out = self.denoiser(x_t, t.to(self.device), class_labels=cond).sample
        return out[:, : self.channels]  # the eps channels of a learned-sigma output

    def describe(self) -> dict:
        d = super().describe()
        d.update(denoiser_class=type(self.denoiser).__name__, num_classes=self.num_classes,
                 class_names=bool(self.id2label))
        return d


def _take_distributions(embedder) -> None:
    """Let a LabelEmbedding take [n, rows] class distributions as well as integer labels: a distribution's output
    is the mixture of the table's rows (for a one-hot row, exactly that row)."""
    if getattr(embedder, "_invmm_distributions", False):
        return
    integer_forward = embedder.forward
    table = embedder.embedding_table

    def forward(labels, force_drop_ids=None):
        if labels.is_floating_point():
            return labels.to(table.weight.dtype) @ table.weight
        return integer_forward(labels, force_drop_ids)

    embedder.forward = forward
    embedder._invmm_distributions = True


def detect(folder: ModelFolder) -> bool:
    transformer = folder.transformer or {}
    # A DiT saved before diffusers had DiTTransformer2DModel is a Transformer2DModel with a label table; a
    # class-conditional UNet2DModel is claimed here too, to be refused with the reason.
    return transformer.get("_class_name") == "DiTTransformer2DModel" or (
        transformer.get("_class_name") == "Transformer2DModel" and bool(transformer.get("num_embeds_ada_norm"))
    ) or ((folder.unet or {}).get("_class_name") == "UNet2DModel" and bool(folder.unet.get("num_class_embeds")))


def load(folder: ModelFolder, *, device, allow_pickle, source, resolution=None, latent_scale=None):
    import diffusers

    root = folder.root
    if folder.transformer is None:
        raise InvMMInputError(
            f"model {root}: a class-conditional UNet2DModel is not supported (no convention names its "
            "unconditional class, which guidance needs); supported class-conditional models are DiT "
            "(transformer/ with DiTTransformer2DModel)"
        )
    cls = getattr(diffusers, folder.transformer["_class_name"])
    transformer = load_component(cls, root / "transformer", allow_pickle, root)
    vae, vae_saved = load_vae(folder, allow_pickle)
    if vae is None:
        no_vae_no_scale(folder, latent_scale)
    id2label = folder.index.get("id2label")
    if id2label is not None and not isinstance(id2label, dict):
        raise InvMMInputError(f"model {root}: model_index.json id2label must map class indices to names")
    return build(DiTAdapter, root, transformer, vae, folder.scheduler_config, id2label=id2label, device=device,
                 source=source, resolution=resolution, vae_saved_config=vae_saved, latent_scale=latent_scale)


FAMILY = Family(
    name="dit", folder="`transformer` (DiTTransformer2DModel) [+ `vae`] + `id2label`", detect=detect, load=load,
    # No paper setting: a class-conditional latent diffusion model takes the `ldm` preset, with its pipeline's
    # guidance (default 4) in the range.
    presets={"dit": {**ldm.PRESET, "guidance_scales": [1.0, 2.0, 3.0, 4.0]}}, sampler="ddim",
    lora=None,  # diffusers has no DiT LoRA loader
    tiny=build_tiny_dit, tiny_variants={"dit": {}, "dit-pixel": {"latent": False}},
)
