"""Dual encoders: images and captions, each embedded into one shared, L2-normalised space.

Two kinds share one interface (`DualEncoder`): `TowerDualEncoder` puts new projection heads on two
transformers towers, built from small configs (the embedded default trains from scratch) or loaded
from pretrained folders (ViT / CLIP / SigLIP vision, BERT-family / CLIP / SigLIP text), as CTP does;
`PretrainedDualEncoder` is a complete CLIP or SigLIP (both towers, their projections, `logit_scale`
and SigLIP's `logit_bias`), as ZSCL and the other continual-learning code bases for these models
start from. Images enter as uint8 and are rescaled and normalised here, so data pipelines stay cheap.
With precomputed image features (data.kind=precomp) the image encoder is an MLP on them instead.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, BertConfig, BertModel, ViTConfig, ViTModel
from transformers.utils import logging as hf_logging

# ccr reports its own progress: transformers' "Loading weights" bars would fill every run's console and log
hf_logging.disable_progress_bar()

if TYPE_CHECKING:
    from ccr.config.schema import ModelConfig, TrainConfig
    from ccr.models.pretrained import Complete



def _tower(path: str, side: str) -> nn.Module:
    """A pretrained tower; a folder transformers cannot build a model from is one ConfigError naming it."""
    from ccr.errors import ConfigError, first_line

    try:
        return _load_tower(path, side)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever transformers raises for a config it cannot take: one line
        raise ConfigError(f"model.{side}.pretrained: {path}: transformers cannot build a model from it "
                          f"({type(e).__name__}: {first_line(e, 200)})"
                          ) from None


def _load_tower(path: str, side: str) -> nn.Module:
    """One tower from a pretrained folder: the right class for what the folder holds. A complete CLIP or
    SigLIP folder gives its vision or text transformer; any other model loads without a pooler (ccr
    pools the last hidden states itself, and a pooler no loss reaches would break DDP)."""
    from ccr.models.pretrained import local_folder, model_type

    what = f"model.{side}.pretrained"
    folder = local_folder(path, what)
    kind = model_type(folder, what)
    if kind in ("clip", "clip_vision_model", "clip_text_model", "siglip", "siglip_vision_model",
                "siglip_text_model"):
        import transformers

        family = "CLIP" if kind.startswith("clip") else "Siglip"
        cls = getattr(transformers, f"{family}{'Vision' if side == 'image' else 'Text'}Model")
        return cls.from_pretrained(folder, local_files_only=True)
    try:
        return AutoModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False)
    except TypeError:  # a model class without that argument
        return AutoModel.from_pretrained(folder, local_files_only=True)


def _freeze_unreached(tower: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """Stop gradients into the parameters of a pretrained tower that ccr's pooling of its last hidden states
    never reaches (CLIP vision's post_layernorm, SigLIP's heads), found by one backward pass on a dummy
    input: they would get no gradient anyway, and DDP requires every trainable parameter to get one."""
    h = tower(**inputs).last_hidden_state
    h.float().sum().backward()
    for p in tower.parameters():
        if p.requires_grad and p.grad is None:
            p.requires_grad_(False)
    tower.zero_grad(set_to_none=True)


class FeatureEncoder(nn.Module):
    """The image side on fixed precomputed features (VSE++ style): regions mean-pooled, then `layers`
    hidden layers of `hidden_size` with GELU (0 layers: the projection alone, as VSE++ does)."""

    def __init__(self, feature_dim: int, hidden_size: int, layers: int):
        super().__init__()
        dims = [feature_dim] + [hidden_size] * layers
        self.mlp = nn.Sequential(*[m for a, b in zip(dims, dims[1:], strict=False)
                                   for m in (nn.Linear(a, b), nn.GELU())])
        self.config = type("FeatureEncoderConfig", (), {"hidden_size": dims[-1]})()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.float()
        return self.mlp(x.mean(1) if x.dim() == 3 else x)


def _pool(hidden: torch.Tensor, how: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    if mask is None:
        return hidden.mean(1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


PARTS = ("image_encoder", "text_encoder", "image_proj", "text_proj", "scale")


class DualEncoder(nn.Module):
    """(B,3,H,W) uint8 images and (B,L) token ids -> (B, D) unit vectors in one space.

    Subclasses set `embed_dim`, `logit_scale` (log of the similarity scale), `logit_bias` (a Parameter for
    the sigmoid loss, else None) and implement `_image` / `_text` (unnormalised embeddings) and `_parts`.
    Every trainable parameter gets a gradient from every batch: DDP needs no `find_unused_parameters` (which
    would also break on `logit_scale`, used by the loss outside the wrapped forward).
    """

    embed_dim: int
    on_features: bool = False
    trims_padding: bool = True  # batches may drop padding beyond their longest caption (not SigLIP)
    logit_bias: nn.Parameter | None

    def _pixels(self, mean, std, rescale: float) -> None:
        # (x * rescale - mean) / std, as (x - mean * 255) / (std * 255) for rescale = 1/255: multiplied by the
        # reciprocal (255.0 in float32), not divided by 1/255, which is 127.49999 for a mean of 0.5 and changed
        # every number of the embedded default in the last bits
        inv = 1.0 / rescale
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1) * inv, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1) * inv, persistent=False)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.on_features:
            return F.normalize(self._image(images), dim=-1)
        return F.normalize(self._image((images.float() - self.pixel_mean) / self.pixel_std), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._text(input_ids, attention_mask), dim=-1)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.encode_images(images), self.encode_text(input_ids, attention_mask)

    def parts(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups (`PARTS`: image/text encoder, image/text projection, scale) for every
        place that freezes or regularises a part: model.freeze, the freeze strategy, EWC's parts."""
        return self._parts()

    def freeze(self, names) -> None:
        """Stop gradients into the named parts (`PARTS`)."""
        parts = self.parts()
        for name in names:
            for p in parts[name]:
                p.requires_grad_(False)

    def freeze_backbone(self) -> None:
        """model.freeze=backbone: the encoders' own weights stop learning. With adapters (model.adapter) those
        are frozen already and the adapters, added to learn, keep learning."""
        adapters = {id(p) for n, p in self.named_parameters() if ".lora_" in n}
        for name in ("image_encoder", "text_encoder"):
            for p in self.parts()[name]:
                if id(p) not in adapters:
                    p.requires_grad_(False)


class TowerDualEncoder(DualEncoder):
    """Two towers with new projection heads (CTP's design; the embedded default from scratch)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, train_cfg: TrainConfig | None = None,
                 image_features: int | None = None):
        super().__init__()
        self.cfg = cfg
        ic, tc = cfg.image, cfg.text
        self.embed_dim = int(cfg.embed_dim or 64)
        self.on_features = image_features is not None
        if self.on_features:
            self.image_encoder = FeatureEncoder(image_features, ic.hidden_size, ic.layers)
        elif ic.pretrained:
            self.image_encoder = _tower(ic.pretrained, "image")
        else:
            self.image_encoder = ViTModel(ViTConfig(
                image_size=ic.image_size, patch_size=ic.patch_size, hidden_size=ic.hidden_size,
                num_hidden_layers=ic.layers, num_attention_heads=ic.heads,
                intermediate_size=ic.intermediate_size, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0), add_pooling_layer=False)
        if tc.pretrained:
            self.text_encoder = _tower(tc.pretrained, "text")
        else:
            self.text_encoder = BertModel(BertConfig(
                vocab_size=vocab_size, hidden_size=tc.hidden_size, num_hidden_layers=tc.layers,
                num_attention_heads=tc.heads, intermediate_size=tc.intermediate_size,
                max_position_embeddings=max(tc.max_length, 8), hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0), add_pooling_layer=False)
        if ic.pretrained and not self.on_features:
            _freeze_unreached(self.image_encoder, {"pixel_values": torch.zeros(1, 3, ic.image_size, ic.image_size)})
        if tc.pretrained:
            _freeze_unreached(self.text_encoder, {"input_ids": torch.tensor([[1, 2]]),
                                                  "attention_mask": torch.ones(1, 2, dtype=torch.long)})
        ih = self.image_encoder.config.hidden_size
        th = self.text_encoder.config.hidden_size
        self.image_proj = nn.Linear(ih, self.embed_dim)
        self.text_proj = nn.Linear(th, self.embed_dim)
        loss = train_cfg.loss if train_cfg else "infonce"
        t0 = train_cfg.temperature if train_cfg else 0.07
        learn = train_cfg.learn_temperature if train_cfg else True
        # the sigmoid loss starts as SigLIP does: scale 10, bias -10 (Zhai et al. 2023)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0) if loss == "siglip" else math.log(1.0 / t0)),
                                        requires_grad=learn)
        self.logit_bias = nn.Parameter(torch.tensor(-10.0)) if loss == "siglip" else None
        self._pixels(ic.mean, ic.std, 1 / 255)

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        if self.on_features:
            return self.image_proj(self.image_encoder(x))
        h = self.image_encoder(pixel_values=x).last_hidden_state
        return self.image_proj(_pool(h, self.cfg.image.pool))

    def _text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.text_proj(_pool(h, self.cfg.text.pool, attention_mask))

    def _parts(self) -> dict[str, list[nn.Parameter]]:
        return {
            "image_encoder": list(self.image_encoder.parameters()),
            "text_encoder": list(self.text_encoder.parameters()),
            "image_proj": list(self.image_proj.parameters()),
            "text_proj": list(self.text_proj.parameters()),
            "scale": [self.logit_scale] + ([self.logit_bias] if self.logit_bias is not None else []),
        }


class PretrainedDualEncoder(DualEncoder):
    """A complete CLIP or SigLIP, loaded with transformers and used as its own `get_image_features` /
    `get_text_features` do. Its modules are registered here directly (not the transformers model as a
    whole), so parameter names say what they are (`image_encoder.*`, `text_proj.*`, `logit_scale`).

    CLIP: image_encoder = vision_model, image_proj = visual_projection, text likewise; pools the class
    token (vision) and the end-of-text token (text). SigLIP: the vision tower pools with its attention
    head and the text tower's linear head projects the last position: those heads are image_proj and
    text_proj; SigLIP reads its padding as it was trained (padded to max length, no attention mask).
    """

    def __init__(self, info: Complete):
        super().__init__()
        import transformers

        self.kind = info.model_type
        cls = transformers.CLIPModel if self.kind == "clip" else transformers.SiglipModel
        try:
            hf = cls.from_pretrained(info.folder, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - whatever transformers raises for a config it cannot take
            from ccr.errors import ConfigError, first_line

            raise ConfigError(f"model.pretrained: {info.folder}: transformers cannot build the model from it "
                              f"({type(e).__name__}: {first_line(e, 200)})"
                              ) from None
        self.embed_dim = info.embed_dim
        self.trims_padding = self.kind == "clip"
        self.image_encoder, self.text_encoder = hf.vision_model, hf.text_model
        if self.kind == "clip":
            self.image_proj, self.text_proj = hf.visual_projection, hf.text_projection
            self.logit_bias = None
        else:
            self.image_proj, self.text_proj = hf.vision_model.head, hf.text_model.head
            self.logit_bias = hf.logit_bias
        self.logit_scale = hf.logit_scale
        self.config = hf.config
        self._pixels(info.mean, info.std, info.rescale)

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.image_encoder(pixel_values=x).pooler_output
        return self.image_proj(pooled) if self.kind == "clip" else pooled  # SigLIP: pooled by its head

    def _text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "clip":
            return self.text_proj(self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).pooler_output)
        return self.text_encoder(input_ids=input_ids).pooler_output  # SigLIP: its head inside, no mask

    def _parts(self) -> dict[str, list[nn.Parameter]]:
        heads = {id(p) for p in [*self.image_proj.parameters(), *self.text_proj.parameters()]}
        return {
            "image_encoder": [p for p in self.image_encoder.parameters() if id(p) not in heads],
            "text_encoder": [p for p in self.text_encoder.parameters() if id(p) not in heads],
            "image_proj": list(self.image_proj.parameters()),
            "text_proj": list(self.text_proj.parameters()),
            "scale": [self.logit_scale] + ([self.logit_bias] if self.logit_bias is not None else []),
        }


def build_model(cfg: ModelConfig, vocab_size: int, train_cfg: TrainConfig | None = None,
                image_features: int | None = None, complete: Complete | None = None) -> DualEncoder:
    """The dual encoder `cfg` describes: a complete pretrained one (model.pretrained; `complete`: its description
    where the caller has read it already, see ccr.models.build.ModelSource), or towers with heads;
    `image_features` (the dataset's feature size) when images are precomputed features."""
    if cfg.pretrained:
        from ccr.models.pretrained import describe

        return PretrainedDualEncoder(complete or describe(cfg.pretrained))
    return TowerDualEncoder(cfg, vocab_size, train_cfg, image_features)
