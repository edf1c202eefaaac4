"""Adapters (LoRA through peft) on a dual encoder's two encoders.

`attach` injects LoRA modules into the encoders' target layers (seeded, so a study and its resume start
from the same adapter); peft freezes the layers it adapts and every other weight of the encoders, so the
adapters train there while the projections and the scale stay trainable. The frozen weights are the
*base*: they never change during the sequence, so checkpoints keep only the other parameters and a
fingerprint of the base (`base_fingerprint`), which a resume checks.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import torch

from ccr.errors import ConfigError

if TYPE_CHECKING:
    from ccr.config.schema import AdapterConfig
    from ccr.models.dual_encoder import DualEncoder

ENCODERS = ("image_encoder", "text_encoder")


def default_targets(model: torch.nn.Module) -> list[str]:
    """The attention query and value projections, as the LoRA paper adapts them: `q_proj`/`v_proj` (CLIP,
    SigLIP), `query`/`value` (BERT, ViT)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    return ["q_proj", "v_proj"] if "q_proj" in names else ["query", "value"]


def attach(model: DualEncoder, cfg: AdapterConfig, seed: int) -> None:
    """Inject `cfg`'s adapters into the encoders of `model` (in place); no-op for kind none."""
    if cfg.kind == "none":
        return
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(cfg.targets) if cfg.targets else None
    done = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in ENCODERS:
            enc = getattr(model, name)
            want = targets or default_targets(enc)
            layers = [(n, m) for n, m in enc.named_modules() if n.rsplit(".", 1)[-1] in want]
            if not layers:
                continue  # e.g. the MLP on precomputed features: nothing to adapt there
            _check_rank(cfg.r, name, layers)
            inject_adapter_in_model(LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                               target_modules=want), enc)
            done.append(name)
    if not done:
        raise ConfigError(f"config key 'model.adapter.targets': no module of either encoder is named "
                          f"{targets or 'q_proj/v_proj or query/value'}")
    model.adapted = done
    model.base_names = {f"{e}.{n}" for e in done for n, p in getattr(model, e).named_parameters()
                        if not p.requires_grad}
    model.base_fingerprint = fingerprint(model)


def _check_rank(r: int, encoder: str, layers: list[tuple[str, torch.nn.Module]]) -> None:
    """A rank above min(in, out) of a layer adds parameters (and checkpoint size) and nothing else: B A is
    already of full rank at min(in, out)."""
    sizes = [(n, m.in_features, m.out_features) for n, m in layers if isinstance(m, torch.nn.Linear)]
    if sizes:
        n, i, o = min(sizes, key=lambda x: min(x[1], x[2]))
        if r > min(i, o):
            raise ConfigError(f"config key 'model.adapter.r': {r} is above the rank of {encoder}.{n} ({i} -> {o} "
                              f"features); a LoRA rank is at most {min(i, o)} there")


@torch.no_grad()
def merge_and_restart(model: torch.nn.Module, seed: int) -> list[str]:
    """Fold every LoRA layer's update (scaling · B A) into its base weight, then start the adapter again (A drawn
    as peft initialises it, from `seed`; B zero, so the model's function is unchanged): C-CLIP's step between
    tasks. Returns the names of the base weights that changed."""
    from peft.tuners.lora import LoraLayer

    changed = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, layer in sorted(model.named_modules(), key=lambda x: x[0]):
            if not isinstance(layer, LoraLayer):
                continue
            for adapter in layer.active_adapters:
                base = layer.get_base_layer()
                base.weight += layer.get_delta_weight(adapter).to(base.weight.dtype)
                layer.reset_lora_parameters(adapter, True)
            changed.append(f"{name}.base_layer.weight")
    return changed


def fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of the base weights' names, shapes and bytes."""
    h = hashlib.sha256()
    named = dict(model.named_parameters())
    for n in sorted(getattr(model, "base_names", ())):
        t = named[n].detach().cpu().contiguous()
        h.update(f"{n}\t{tuple(t.shape)}\t{t.dtype}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state a checkpoint keeps: everything but the base weights (all of it without an adapter)."""
    base = getattr(model, "base_names", set())
    return {k: v for k, v in model.state_dict().items() if k not in base}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor], base_fp: str | None,
                         where: str) -> None:
    """Load a checkpoint's state; with an adapter, its base fingerprint must match this model's base."""
    base = getattr(model, "base_names", set())
    if base_fp is not None and base_fp != getattr(model, "base_fingerprint", None):
        raise ConfigError(f"{where} was trained on other base weights than this study's (fingerprint {base_fp}, "
                          f"here {getattr(model, 'base_fingerprint', None)}): the pretrained weights changed")
    if base and base_fp is None:
        raise ConfigError(f"{where} holds no base fingerprint, but this study uses an adapter (model.adapter)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - base:
        raise ConfigError(f"{where} does not fit this model: unexpected {sorted(unexpected)[:3]}, missing "
                          f"{sorted(set(missing) - base)[:3]}")
