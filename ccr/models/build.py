"""Building a study's model: what pretrained weights decide (embed size, text length, pixels), read once into a
`ModelSource` and checked before anything is built, and the one way every process builds the same model and
tokenizer from it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ccr.errors import ConfigError
from ccr.io.images import Pixels
from ccr.models.dual_encoder import DualEncoder, build_model
from ccr.models.tokenizer import TokenizedCaptions, load_tokenizer, tokenize_all

if TYPE_CHECKING:
    from ccr.config.schema import Config
    from ccr.data.dataset import RetrievalDataset
    from ccr.models.pretrained import Complete


@dataclass(frozen=True)
class ModelSource:
    """`model.pretrained` resolved once, into the value the rest of a study is handed: the config with what the
    weights decide filled in (embed_dim, the generated images' size), the complete model's description (its
    folder on this node, preprocessing, text length; None for towers built from a config)."""

    cfg: Config
    complete: Complete | None = None

    @property
    def pixels(self) -> Pixels:
        """How image files become this model's input: a complete model's own preprocessing, else ccr's square
        crop at model.image.image_size."""
        return self.complete.pixels if self.complete else Pixels.square(self.cfg.model.image.image_size)

    @property
    def text_length(self) -> tuple[int, bool]:
        """(tokens per caption, whether batches may trim padding): a complete model's own length (CLIP 77, SigLIP
        64) and padding (SigLIP reads its padding, so no trimming), else model.text.max_length."""
        if self.complete:
            return self.complete.max_length, self.complete.model_type != "siglip"
        return self.cfg.model.text.max_length, True

    @property
    def tokenizer_folder(self) -> str | None:
        """Where a complete model's tokenizer is (None: the study trains its own, or a text tower brings one)."""
        return str(self.complete.folder) if self.complete else None


def _vision_size(spec: str) -> int | None:
    from ccr.models.pretrained import folder_config, local_folder

    what = "model.image.pretrained"
    folder = local_folder(spec, what)
    cfg = folder_config(folder, what)
    vision = cfg.get("vision_config") or cfg
    size = vision.get("image_size") if isinstance(vision, dict) else None
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ConfigError(f"{what}: {folder / 'config.json'}: image_size must be a positive whole number, got "
                          f"{size!r}"[:300])
    return size or None


def _with_complete(cfg: Config, info: Complete) -> Config:
    m, d = cfg.model, cfg.data
    if m.embed_dim is not None and m.embed_dim != info.embed_dim:
        raise ConfigError(f"config key 'model.embed_dim': {m.embed_dim}, but {m.pretrained} embeds in "
                          f"{info.embed_dim} dimensions (leave model.embed_dim unset)")
    if d.kind == "generated" and d.image_size is None:  # the generated images: the size the model takes
        d = dataclasses.replace(d, image_size=info.image_size)
    if d.kind == "generated" and d.image_size != info.image_size:
        raise ConfigError(f"config key 'data.image_size': the generated images are {d.image_size} px, but "
                          f"{m.pretrained} takes {info.image_size} px images: leave data.image_size unset, or set "
                          f"it to {info.image_size}")
    return dataclasses.replace(cfg, data=d, model=dataclasses.replace(m, embed_dim=info.embed_dim))


def _with_towers(cfg: Config) -> Config:
    m, d = cfg.model, cfg.data
    if d.kind == "precomp":
        return cfg
    size = m.image.image_size
    if m.image.pretrained:
        have = _vision_size(m.image.pretrained)
        if have is not None and have != size:
            raise ConfigError(f"config key 'model.image.image_size': {size}, but the image tower "
                              f"{m.image.pretrained} takes {have} px images: set model.image.image_size={have}")
    if d.kind == "generated" and d.image_size is None:
        return dataclasses.replace(cfg, data=dataclasses.replace(d, image_size=size))
    if d.kind == "generated" and d.image_size != size:
        raise ConfigError(f"config keys 'data.image_size' ({d.image_size}) and 'model.image.image_size' ({size}) "
                          "differ: the generated images must be the size the image encoder takes")
    return cfg


def model_source(cfg: Config) -> ModelSource:
    """Read model.pretrained once (staged to this node when a URI) and check, before anything is built, what the
    weights decide against the config: a conflicting embed_dim, and image sizes that disagree (the generated
    data's, model.image.image_size, a checkpoint's) are one ConfigError each."""
    if cfg.model.pretrained:
        from ccr.models.pretrained import describe

        info = describe(cfg.model.pretrained)
        return ModelSource(_with_complete(cfg, info), info)
    return ModelSource(_with_towers(cfg))


def resolve_model(cfg: Config) -> Config:
    """The config with what the pretrained weights decide filled in (`model_source(cfg).cfg`)."""
    return model_source(cfg).cfg


def pixels_for(cfg: Config) -> Pixels:
    """How image files become pixels for this config's model: a complete model's preprocessing, else ccr's square
    crop at model.image.image_size. Nothing else is checked: for callers that read a dataset only for its tasks
    (a sweep's task orders, the dataset card); a study uses `model_source(cfg).pixels`."""
    if cfg.model.pretrained:
        from ccr.models.pretrained import describe

        return ModelSource(cfg, describe(cfg.model.pretrained)).pixels
    return ModelSource(cfg).pixels


def build_for(source: ModelSource | Config, ds: RetrievalDataset, tokenizer: str | Path,
              device: torch.device | str = "cpu", adapter: bool = True
              ) -> tuple[DualEncoder, object, TokenizedCaptions]:
    """(model, tokenizer, every caption tokenized) for a study: the one way the driver, Ray Train workers and
    shard actors build them, so they all hold the same model (seeded initialisation, or pretrained weights,
    with model.adapter's adapters attached unless `adapter` is False: a study attaches them itself after
    its pretraining stage, whose model is their base). `source`: the study's resolved model (a Config is
    resolved here)."""
    source = source if isinstance(source, ModelSource) else model_source(source)
    tok = load_tokenizer(tokenizer)
    length, trim = source.text_length
    tokens = tokenize_all(tok, ds.captions, length, trim)
    model = seeded_model(source, len(tok), getattr(ds.images, "feature_dim", None), adapter)
    return model.to(device), tok, tokens


def seeded_model(source: ModelSource, vocab_size: int, image_features: int | None = None, adapter: bool = True
                 ) -> DualEncoder:
    """The study's model before any training, the same in every process: its initialisation seeded by the
    config's seed (or pretrained weights), with model.adapter's adapters unless `adapter` is False."""
    cfg = source.cfg
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, vocab_size, cfg.train, image_features, source.complete)
    if adapter:
        attach_adapter(model, cfg)
    return model


def attach_adapter(model: DualEncoder, cfg: Config) -> None:
    """model.adapter's adapters, initialised from a seed of their own (the same in every process)."""
    from ccr import seeds
    from ccr.models.adapters import attach
    from ccr.seeds import task_seed

    attach(model, cfg.model.adapter, task_seed(cfg.seed, 0, seeds.ADAPTER_INIT))
