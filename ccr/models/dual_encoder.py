"""DualEncoder: image encoder + text encoder, each projected into one shared, L2-normalised space.

Encoders come from transformers: built from small configs (the embedded default trains from
scratch) or loaded from a local pretrained path (ViT / CLIP vision, BERT-family); nothing is
fetched from a hub. Images enter as uint8 and are normalised here, so data pipelines stay cheap.
With precomputed image features (data.kind=precomp) the image encoder is an MLP on them instead.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel, ViTConfig, ViTModel

if TYPE_CHECKING:
    from ccr.config import ModelConfig, TrainConfig



def _vision_from_pretrained(path: str) -> nn.Module:
    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    if getattr(cfg, "model_type", "") in ("clip", "siglip"):
        from transformers import CLIPVisionModel

        return CLIPVisionModel.from_pretrained(path, local_files_only=True)
    return AutoModel.from_pretrained(path, local_files_only=True)


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


class DualEncoder(nn.Module):
    """(B,3,H,W) uint8 images and (B,L) token ids -> (B, D) unit vectors in one space."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, train_cfg: TrainConfig | None = None,
                 image_features: int | None = None):
        super().__init__()
        self.cfg = cfg
        ic, tc = cfg.image, cfg.text
        self.on_features = image_features is not None
        if self.on_features:
            self.image_encoder = FeatureEncoder(image_features, ic.hidden_size, ic.layers)
        elif ic.pretrained:
            self.image_encoder = _vision_from_pretrained(ic.pretrained)
        else:
            self.image_encoder = ViTModel(ViTConfig(
                image_size=ic.image_size, patch_size=ic.patch_size, hidden_size=ic.hidden_size,
                num_hidden_layers=ic.layers, num_attention_heads=ic.heads,
                intermediate_size=ic.intermediate_size, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0), add_pooling_layer=False)
        if tc.pretrained:
            self.text_encoder = AutoModel.from_pretrained(tc.pretrained, local_files_only=True)
        else:
            self.text_encoder = BertModel(BertConfig(
                vocab_size=vocab_size, hidden_size=tc.hidden_size, num_hidden_layers=tc.layers,
                num_attention_heads=tc.heads, intermediate_size=tc.intermediate_size,
                max_position_embeddings=max(tc.max_length, 8), hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0), add_pooling_layer=False)
        ih = self.image_encoder.config.hidden_size
        th = self.text_encoder.config.hidden_size
        self.image_proj = nn.Linear(ih, cfg.embed_dim)
        self.text_proj = nn.Linear(th, cfg.embed_dim)
        t0 = train_cfg.temperature if train_cfg else 0.07
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / t0)),
                                        requires_grad=train_cfg.learn_temperature if train_cfg else True)
        self.register_buffer("pixel_mean", torch.tensor(ic.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(ic.std).view(1, 3, 1, 1) * 255.0, persistent=False)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.on_features:
            return F.normalize(self.image_proj(self.image_encoder(images)), dim=-1)
        x = (images.float() - self.pixel_mean) / self.pixel_std
        h = self.image_encoder(pixel_values=x).last_hidden_state
        return F.normalize(self.image_proj(_pool(h, self.cfg.image.pool)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.text_proj(_pool(h, self.cfg.text.pool, attention_mask)), dim=-1)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.encode_images(images), self.encode_text(input_ids, attention_mask)

    def parts(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups, for strategies that freeze or regularise one side."""
        return {
            "image_encoder": list(self.image_encoder.parameters()),
            "text_encoder": list(self.text_encoder.parameters()),
            "image_proj": list(self.image_proj.parameters()),
            "text_proj": list(self.text_proj.parameters()),
            "logit_scale": [self.logit_scale],
        }


def build_model(cfg: ModelConfig, vocab_size: int, train_cfg: TrainConfig | None = None,
                image_features: int | None = None) -> DualEncoder:
    """The dual encoder; `image_features` (the dataset's feature size) when images are precomputed features."""
    return DualEncoder(cfg, vocab_size, train_cfg, image_features)
