"""Low-rank adapters (LoRA, through ``peft``) on the encoder of a BrainLM model.

``brainlm finetune --lora`` trains, instead of the encoder, a pair of low-rank matrices beside
every linear layer of its blocks (attention ``qkv`` and ``proj``, MLP ``fc1`` and ``fc2``):
``W x + (alpha / r) B A x`` with ``A`` ``(r, in)`` and ``B`` ``(out, r)``, ``B`` starting at zero,
as Brainmarks' fine-tuning does with ``peft`` (its ``finetune_mode: lora``, ``r=8``,
``lora_alpha=16``, ``lora_dropout=0.05``). The embeddings, the decoder and the encoder weights
stay as they were.

On disk (:func:`save_adapter`) the adapter is a folder ``adapter/`` in ``peft``'s format
(``adapter_config.json``, ``adapter_model.safetensors``) beside the unchanged base checkpoint.
:func:`attach_adapter` puts it back with ``peft`` (the same modules, so the same outputs);
:func:`brainlm.checkpoint.merge_adapter` folds it into the weights with plain tensors
(``W + (alpha / r) B A``) whenever such a folder is opened, so every command gets the fine-tuned
encoder, without ``peft``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from brainlm.checkpoint import ADAPTER_DIR, read_adapter
from brainlm.errors import UserError
from brainlm.io import atomic_write, atomic_write_json

__all__ = ["LORA_TARGETS", "add_lora", "count_parameters", "save_adapter", "attach_adapter", "base_state_dict",
           "ADAPTER_DIR"]

# The linear layers of the encoder blocks, by their names in BrainLMForPretraining.
LORA_TARGETS = r"encoder\.blocks\.layers\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
_WEIGHTS = "adapter_model.safetensors"
_CONFIG = "adapter_config.json"


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError("--lora needs peft: pip install 'brainlm[lora]'") from None
    return peft


def add_lora(backbone: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.05) -> nn.Module:
    """Put LoRA adapters on the encoder's linear layers, in place; only they require gradients."""
    peft = _peft()
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS, bias="none")
    for p in backbone.parameters():
        p.requires_grad_(False)
    peft.inject_adapter_in_model(config, backbone)
    backbone.lora_config = config
    return backbone


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(adapter parameters, all other parameters)`` of a module."""
    lora = sum(p.numel() for n, p in module.named_parameters() if "lora_" in n)
    return lora, sum(p.numel() for p in module.parameters()) - lora


def base_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The weights without the adapters, under the names of the plain model."""
    return {k.replace(".base_layer.", "."): v for k, v in backbone.state_dict().items() if "lora_" not in k}


def save_adapter(backbone: nn.Module, folder: str | Path) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (``peft``'s format) into ``folder``."""
    from safetensors.torch import save_file

    peft = _peft()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in peft.get_peft_model_state_dict(backbone).items()}
    atomic_write(folder / _WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    config = backbone.lora_config.to_dict()
    config["target_modules"] = LORA_TARGETS
    atomic_write_json(folder / _CONFIG, json.loads(json.dumps(config, default=str)), sort_keys=True)
    return folder


def attach_adapter(backbone: nn.Module, folder: str | Path) -> nn.Module:
    """Put a saved adapter back on a base model with ``peft`` (in place): outputs as when it was saved."""
    peft = _peft()
    config, state = read_adapter(Path(folder))
    add_lora(backbone, config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0))
    result = peft.set_peft_model_state_dict(backbone, state)
    if getattr(result, "unexpected_keys", None):
        raise UserError(f"{folder}: adapter weights {result.unexpected_keys[:3]} match no layer of this model")
    return backbone
