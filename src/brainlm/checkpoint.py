"""The BrainLM checkpoint formats, in and out: ours and the original code's.

Our format is a folder with ``config.json`` (``model_type: brainlm``) and ``model.safetensors``
holding :class:`~brainlm.model.BrainLMForPretraining`'s state dict.

Both formats are registered with :func:`brainlm.hub.register_format`, so that
:func:`brainlm.hub.open_model` (and ``from_pretrained``) read them; the loaders are generic over
the model class they are handed (its ``config_class`` builds the config), so this module never
imports a model, as timm's ``build_model_with_cfg``.

The original BrainLM format (``model_type: brainlm_mae``, a ``transformers`` checkpoint of
its ``BrainLMForPretraining``) comes in through one adapter here: its config keys map one to
one, its separate query/key/value weights are fused, and two kinds of stored tensors that
carry no information are dropped (the sinusoidal tables ``*.pos_embedding.pe``, which we
compute, and ``decoder.decoder_pred``, a leftover image head that the original never uses).

Pickled ``.bin`` files are read with ``torch.load(weights_only=True)`` only: a pickle that
would run code is refused before anything in it runs.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from brainlm.errors import MissingInputError, UserError
from brainlm.hub import open_model, register_format
from brainlm.io import atomic_write, atomic_write_text, claim_folder, write_manifest
from brainlm.memory import check_memory

__all__ = ["BRAINLM_TYPES", "ADAPTER_DIR", "read_adapter", "merge_adapter", "load_pretrained", "save_pretrained", "save_weights", "save_config",
           "load_state_dict_file", "convert_original_state_dict", "original_config_to_ours", "to_original_state_dict"]

# The model types of BrainLM checkpoints: ours, and the original code's (brainlm_mae).
BRAINLM_TYPES = ("brainlm", "brainlm_mae")
# A LoRA fine-tune (brainlm finetune --lora) keeps the base weights and its adapter in peft's format beside them.
ADAPTER_DIR = "adapter"
_ADAPTER_CONFIG, _ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# Config keys of the original that have no meaning here (image-model leftovers, HF metadata).
_ORIGINAL_IGNORED_KEYS = {
    "architectures", "image_size", "patch_size", "num_channels", "norm_pix_loss", "torch_dtype",
    "transformers_version", "model_type", "_name_or_path", "output_attentions", "output_hidden_states",
    "return_dict", "use_return_dict", "id2label", "label2id", "problem_type", "chunk_size_feed_forward",
    "is_encoder_decoder", "tie_word_embeddings", "pruned_heads",
}
# Stored tensors of the original that carry nothing we need.
_ORIGINAL_DROPPED = re.compile(r"(^|\.)pos_embedding\.pe$|^decoder\.decoder_pred\.(weight|bias)$")

# original layer sub-module name -> ours (qkv handled separately)
_LAYER_RENAMES = {
    "attention.self.conv.weight": "attn.conv.weight",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "attention.output.LayerNorm.weight": "norm1.weight",
    "attention.output.LayerNorm.bias": "norm1.bias",
    "intermediate.dense.weight": "mlp.fc1.weight",
    "intermediate.dense.bias": "mlp.fc1.bias",
    "output.dense.weight": "mlp.fc2.weight",
    "output.dense.bias": "mlp.fc2.bias",
    "output.LayerNorm.weight": "norm2.weight",
    "output.LayerNorm.bias": "norm2.bias",
}
_TOP_RENAMES = {
    "vit.embeddings.cls_token": "encoder.cls_token",
    "vit.embeddings.signal_embedding_projection.weight": "encoder.signal_proj.weight",
    "vit.embeddings.signal_embedding_projection.bias": "encoder.signal_proj.bias",
    "vit.embeddings.xyz_embedding_projection.weight": "encoder.xyz_proj.weight",
    "vit.embeddings.xyz_embedding_projection.bias": "encoder.xyz_proj.bias",
    "vit.layernorm.weight": "encoder.norm.weight",
    "vit.layernorm.bias": "encoder.norm.bias",
    "decoder.mask_token": "decoder.mask_token",
    "decoder.decoder_embed.weight": "decoder.embed.weight",
    "decoder.decoder_embed.bias": "decoder.embed.bias",
    "decoder.decoder_xyz_projection.weight": "decoder.xyz_proj.weight",
    "decoder.decoder_xyz_projection.bias": "decoder.xyz_proj.bias",
    "decoder.decoder_norm.weight": "decoder.norm.weight",
    "decoder.decoder_norm.bias": "decoder.norm.bias",
    "decoder.decoder_pred1.weight": "decoder.pred1.weight",
    "decoder.decoder_pred1.bias": "decoder.pred1.bias",
    "decoder.decoder_pred2.weight": "decoder.pred2.weight",
    "decoder.decoder_pred2.bias": "decoder.pred2.bias",
}
_LAYER_PREFIXES = {"vit.encoder.layer.": "encoder.blocks.layers.", "decoder.decoder_layers.": "decoder.blocks.layers."}


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file, or a pickled ``.bin`` with ``weights_only=True``.

    Raises:
        ValueError: the pickle holds anything but tensors and plain containers (it may try
            to run code); nothing in it is executed.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise UserError(f"cannot read weights from {path}: {err}") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"refusing to load {path}: it is not a plain tensor pickle (it may execute code when "
            f"unpickled). Convert it to safetensors in a trusted environment. Detail: {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError(f"cannot read weights from {path} (truncated or not a torch file): {err}") from err
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path} does not hold a flat state dict of tensors")
    return state


def _find_weights(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise MissingInputError(f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}")


def original_config_to_ours(raw: dict[str, Any], config_class) -> Any:
    """Map an original ``brainlm_mae`` config dict to ``config_class`` (:class:`~brainlm.model.BrainLMConfig`).

    The original's layers take their exact attention branch when ``num_landmarks ==
    segment_means_seq_len``; any other pair would select its Nystrom branch, which we map to
    ``attention_type="nystrom"`` with a warning (its landmark reshape differs from ours).
    """
    names = set(config_class.__dataclass_fields__) - {"extra"}
    known = {k: v for k, v in raw.items() if k in names}
    unknown = {k: v for k, v in raw.items() if k not in names and k not in _ORIGINAL_IGNORED_KEYS}
    if unknown:
        warnings.warn(f"ignoring unknown config keys: {sorted(unknown)}", stacklevel=3)
    landmarks = raw.get("num_landmarks", 64)
    seg_len = raw.get("segment_means_seq_len", 64)
    if landmarks != seg_len:
        warnings.warn(
            "num_landmarks != segment_means_seq_len: the original would use its Nystrom branch; "
            "loading with attention_type='nystrom', whose landmarks differ from the original's",
            stacklevel=3,
        )
        known["attention_type"] = "nystrom"
    # The original's layers always have q/k/v biases, whatever its config says.
    known["qkv_bias"] = True
    known.setdefault("num_timepoints_per_voxel", 490)  # the original config class defaults
    known.setdefault("timepoint_patching_size", 49)
    return config_class(**known, extra=unknown)


def _layer_key(key: str, prefixes: dict[str, str]) -> tuple[str, str] | None:
    """``(layer prefix in the other naming, rest of the key)`` for a per-layer key, else None."""
    for prefix, other in prefixes.items():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            return f"{other}{index}.", rest
    return None


def convert_original_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original BrainLM state dict to ours; fuse q/k/v. Unknown keys are kept as is."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if _ORIGINAL_DROPPED.search(key):
            continue
        split = _layer_key(key, _LAYER_PREFIXES)
        m = re.fullmatch(r"attention\.self\.(query|key|value)\.(weight|bias)", split[1]) if split else None
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
        elif m:
            qkv.setdefault(f"{split[0]}attn.qkv.{m.group(2)}", {})[m.group(1)] = value
        elif split and split[1] in _LAYER_RENAMES:
            out[split[0] + _LAYER_RENAMES[split[1]]] = value
        else:
            out[key] = value
    for name, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            missing = sorted({"query", "key", "value"} - set(parts))
            raise UserError(f"original checkpoint lacks {missing} for {name}")
        out[name] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        lines = [f"weights in {source} do not match the model:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {', '.join(unexpected)}")
        raise UserError("\n".join(lines))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise UserError(f"weights in {source} have the wrong shapes for this config:\n  " + "\n  ".join(wrong))
    model.load_state_dict(state, strict=True)


def load_pretrained(path_or_hub_id: str | Path, map_location: str | torch.device = "cpu", *,
                    revision: str | None = None, adapter: bool = True, trust_unverified: bool = False):
    """A BrainLM model (our format or the original's) from a folder, a training run or a hub id.

    :func:`brainlm.hub.open_model` restricted to BrainLM checkpoints
    (``BrainLMForPretraining.from_pretrained`` does the same).

    Args:
        adapter: fold a LoRA fine-tune's ``adapter/`` into the weights (False: the base weights).
        trust_unverified: use a folder that no complete ``manifest.json`` verifies.

    Returns:
        The model in eval mode on ``map_location``.
    """
    return open_model(path_or_hub_id, map_location=map_location, revision=revision, model_types=BRAINLM_TYPES,
                      adapter=adapter, trust_unverified=trust_unverified)


def _load_brainlm(cls, folder: Path, raw: dict[str, Any], *, map_location: str | torch.device = "cpu",
                  adapter: bool = True):
    """A BrainLM checkpoint folder (ours or the original's) as ``cls``, in eval mode (registered loader)."""
    weights = _find_weights(folder)
    original = raw.get("model_type") == "brainlm_mae"
    try:  # the config's values are checked before a model is built
        config = original_config_to_ours(raw, cls.config_class) if original else cls.config_class.from_dict(raw)
    except (UserError, TypeError) as err:
        raise UserError(f"{folder / 'config.json'}: {str(err).splitlines()[0]}") from None
    if set(config.extra) - {"training_tr"} and not original:  # training_tr: the TRs training records
        warnings.warn(f"{folder / 'config.json'}: keeping unknown config keys {sorted(config.extra)}", stacklevel=3)
    convert = convert_original_state_dict if original else dict
    check_memory(8 * config.num_parameters(), torch.device(map_location), f"{folder}: this model "
                 f"({config.num_parameters() / 1e6:.0f}M parameters)", "is config.json right?")
    state = convert(load_state_dict_file(weights))
    model = cls(config)
    _load_strict(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, weights)
    if adapter and (folder / ADAPTER_DIR).is_dir():  # a LoRA fine-tune: its adapter folded into the weights
        merge_adapter(model, folder / ADAPTER_DIR)
    return model.to(map_location).eval()


def read_adapter(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``adapter_config.json`` and the weights of a LoRA adapter folder (``peft``'s format)."""
    if not (folder / _ADAPTER_CONFIG).is_file() or not (folder / _ADAPTER_WEIGHTS).is_file():
        raise MissingInputError(f"{folder}: not a LoRA adapter (needs {_ADAPTER_CONFIG} and {_ADAPTER_WEIGHTS})")
    return json.loads((folder / _ADAPTER_CONFIG).read_text()), load_file(str(folder / _ADAPTER_WEIGHTS))


def merge_adapter(backbone: torch.nn.Module, folder: str | Path) -> torch.nn.Module:
    """Fold a saved adapter into the weights (``W += (alpha / r) B A``), in place, without ``peft``."""
    folder = Path(folder)
    config, state = read_adapter(folder)
    scale = config["lora_alpha"] / (config["r"] ** 0.5 if config.get("use_rslora") else config["r"])
    modules = dict(backbone.named_modules())
    with torch.no_grad():
        for key, a in state.items():
            if ".lora_A." not in key:
                continue
            name = key.split(".lora_A.")[0]
            b = state[key.replace(".lora_A.", ".lora_B.")]
            if name not in modules:
                raise UserError(f"{folder}: the adapter targets {name!r}, which this model does not have")
            weight = modules[name].weight
            weight += (scale * (b.float() @ a.float())).to(weight.dtype)  # (out, in)
    return backbone


def save_weights(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """A state dict as safetensors, written atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt", "brainlm": "1"}))


def save_config(config, path: str | Path) -> None:
    """A model config as ``config.json``, written atomically."""
    atomic_write_text(path, config.to_json() + "\n")


def save_pretrained(model: torch.nn.Module, path: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into the folder ``path``, each atomically,
    then the folder's ``manifest.json`` (no model card: ``model.save_pretrained`` adds one). The
    folder is claimed for a checkpoint first (:func:`brainlm.io.claim_folder`): new, empty, or a
    checkpoint folder."""
    folder = claim_folder(path, "checkpoint", overwrite=True, flag="path")
    save_weights(model.state_dict(), folder / "model.safetensors")
    save_config(model.config, folder / "config.json")
    write_manifest(folder)
    return folder


def to_original_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in the original's names (q/k/v split again); the inverse of the adapter.

    The original's computed tables and unused image head are not produced.
    """
    top = {v: k for k, v in _TOP_RENAMES.items()}
    layer_names = {v: k for k, v in _LAYER_RENAMES.items()}
    ours = {v: k for k, v in _LAYER_PREFIXES.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        split = _layer_key(key, ours)
        if key in top:
            out[top[key]] = value
        elif split is None:
            raise KeyError(f"no original name for {key}")
        elif split[1].startswith("attn.qkv."):
            kind = split[1].rsplit(".", 1)[1]
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"{split[0]}attention.self.{name}.{kind}"] = part
        else:
            out[split[0] + layer_names[split[1]]] = value
    return out


register_format("brainlm", _load_brainlm, save=save_pretrained)
register_format("brainlm_mae", _load_brainlm)
