"""Import of the authors' released UniAD checkpoints (github zhiyuanyou/UniAD, ``ckpt.pth.tar``).

Their file is ``{"epoch", "arch", "state_dict", "best_metric", "optimizer"}``; ``state_dict`` comes from a
DDP-wrapped model: ``module.backbone.*`` (lukemelas' EfficientNet port, ``_blocks.{i}._depthwise_conv`` …),
``module.reconstruction.*`` (132 tensors for the paper's model) and a parameter-free neck.

``convert_official_state_dict`` maps every tensor onto the keys of :class:`UniADModel`'s ``state_dict``
(``backbone.module.<timm name>`` and ``reconstruction.<name>``) and fails loudly on anything it does not know,
on missing tensors and on inconsistent shapes. ``load_official_state_dict`` then checks the result against a
model and loads it.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from anomaly_zoo.models.components.checkpoint import (
    EASYDICT,
    NUMPY_SCALARS,
    CheckpointError,
    load_checkpoint,
    state_dict_of,
)

RECONSTRUCTION_ROOTS = ("pos_embed.", "input_proj.", "output_proj.", "transformer.")

_ATTN = r"(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"
_AFFINE = r"(weight|bias)"
# (authors' pattern, our template); groups are re-inserted in order.
_RECON_RULES: list[tuple[str, str]] = [
    (r"pos_embed\.(row_embed|col_embed)\.weight", r"pos_embed.\1.weight"),
    (r"(input_proj|output_proj)\." + _AFFINE, r"\1.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.self_attn\." + _ATTN, r"encoder_layers.\1.self_attn.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.(linear1|linear2)\." + _AFFINE, r"encoder_layers.\1.ffn.\2.\3"),
    (r"transformer\.encoder\.layers\.(\d+)\.(norm1|norm2)\." + _AFFINE, r"encoder_layers.\1.\2.\3"),
    (r"transformer\.decoder\.layers\.(\d+)\.learned_embed\.weight", r"decoder_layers.\1.query"),
    # The authors' decoder "self_attn" attends the ENCODER output, "multihead_attn" the previous layer's output.
    (r"transformer\.decoder\.layers\.(\d+)\.self_attn\." + _ATTN, r"decoder_layers.\1.encoder_attn.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.multihead_attn\." + _ATTN, r"decoder_layers.\1.previous_attn.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.(linear1|linear2)\." + _AFFINE, r"decoder_layers.\1.ffn.\2.\3"),
    (r"transformer\.decoder\.layers\.(\d+)\.(norm1|norm2|norm3)\." + _AFFINE, r"decoder_layers.\1.\2.\3"),
    (r"transformer\.decoder\.norm\." + _AFFINE, r"decoder_norm.\1"),
]
_ENCODER_LAYER_KEYS = [f"self_attn.{k}" for k in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")] + [
    f"{m}.{p}" for m in ("linear1", "linear2", "norm1", "norm2") for p in ("weight", "bias")
]
_DECODER_LAYER_KEYS = (
    ["learned_embed.weight"]
    + [f"{a}.{k}" for a in ("self_attn", "multihead_attn")
       for k in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")]
    + [f"{m}.{p}" for m in ("linear1", "linear2", "norm1", "norm2", "norm3") for p in ("weight", "bias")]
)
_RECON_FIXED_KEYS = [
    "pos_embed.row_embed.weight", "pos_embed.col_embed.weight", "input_proj.weight", "input_proj.bias",
    "output_proj.weight", "output_proj.bias", "transformer.decoder.norm.weight", "transformer.decoder.norm.bias",
]

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_BLOCK_EXPANDED = {  # lukemelas MBConv with expansion → timm InvertedResidual
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_BLOCK_DEPTHWISE = {  # expand ratio 1 → timm DepthwiseSeparableConv
    "_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw", "_bn2": "bn2",
}
_BACKBONE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


class OfficialCheckpointError(CheckpointError):
    """The authors' checkpoint does not fit (unknown or missing tensors, inconsistent shapes)."""


# ---- file ------------------------------------------------------------------------------------------------
#: What the authors' ``ckpt.pth.tar`` pickles besides tensors: their config (``easydict.EasyDict``, read as a
#: plain OrderedDict so easydict need not be installed) and ``best_metric`` (a numpy float). Nothing else.
OFFICIAL_ALLOWED_GLOBALS = {**EASYDICT, **NUMPY_SCALARS}


def load_official_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict inside the authors' ``ckpt.pth.tar`` (or a bare state dict file).

    Always loaded with ``weights_only=True``: besides tensors only the types in ``OFFICIAL_ALLOWED_GLOBALS``
    are accepted; a file that needs anything else is refused with an error naming those objects (no
    fallback to full unpickling, which could run code from the file).
    """
    option, what = "--model.init_args.official_checkpoint", "UniAD official checkpoint"
    obj = load_checkpoint(path, option=option, what=what, allowed=OFFICIAL_ALLOWED_GLOBALS)
    try:
        return state_dict_of(obj, path, option=option, what=what, keys=("state_dict",))
    except CheckpointError as err:
        raise OfficialCheckpointError(f"{err} It is not a UniAD checkpoint.") from None


# ---- mapping ---------------------------------------------------------------------------------------------
def split_official(official: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone, reconstruction) tensors with the ``module.`` / ``module.backbone.`` / ``module.reconstruction.``
    prefixes removed. Keys without a sub-module prefix are reconstruction keys (a bare reconstruction dict)."""
    if isinstance(official.get("state_dict"), Mapping):
        official = official["state_dict"]  # type: ignore[assignment]
    backbone: dict[str, torch.Tensor] = {}
    recon: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in official.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k.startswith("backbone."):
            backbone[k[len("backbone."):]] = value
        elif k.startswith("reconstruction."):
            recon[k[len("reconstruction."):]] = value
        elif k.startswith(RECONSTRUCTION_ROOTS):
            recon[k] = value
        else:  # the authors' neck (MFCN) has no tensors, so "neck.*" is unknown too
            unknown.append(key)
    if unknown:
        raise OfficialCheckpointError(
            f"{len(unknown)} tensor(s) are not part of a UniAD checkpoint (expected module.backbone.*, "
            f"module.reconstruction.* or bare reconstruction keys): {unknown[:8]}"
        )
    return backbone, recon


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_reconstruction(recon: Mapping[str, torch.Tensor]) -> None:
    enc = sorted({int(m.group(1)) for k in recon if (m := re.match(r"transformer\.encoder\.layers\.(\d+)\.", k))})
    dec = sorted({int(m.group(1)) for k in recon if (m := re.match(r"transformer\.decoder\.layers\.(\d+)\.", k))})
    expected = list(_RECON_FIXED_KEYS)
    expected += [f"transformer.encoder.layers.{i}.{k}" for i in range(len(enc)) for k in _ENCODER_LAYER_KEYS]
    expected += [f"transformer.decoder.layers.{i}.{k}" for i in range(len(dec)) for k in _DECODER_LAYER_KEYS]
    missing = [k for k in expected if k not in recon]
    if missing or not dec or enc != list(range(len(enc))) or dec != list(range(len(dec))):
        raise OfficialCheckpointError(
            f"The reconstruction part is incomplete: {len(missing)} tensor(s) missing, e.g. {missing[:6]} "
            f"(encoder layers found: {enc}, decoder layers found: {dec})."
        )
    c, c_in = _shape(recon["input_proj.weight"])
    h, half = _shape(recon["pos_embed.row_embed.weight"])
    w = _shape(recon["pos_embed.col_embed.weight"])[0]
    ffn = _shape(recon["transformer.encoder.layers.0.linear1.weight"])[0] if enc else (
        _shape(recon["transformer.decoder.layers.0.linear1.weight"])[0])
    want: dict[str, tuple[int, ...]] = {
        "input_proj.weight": (c, c_in), "input_proj.bias": (c,), "output_proj.weight": (c_in, c),
        "output_proj.bias": (c_in,), "pos_embed.row_embed.weight": (h, c // 2), "pos_embed.col_embed.weight": (w, c // 2),
        "transformer.decoder.norm.weight": (c,), "transformer.decoder.norm.bias": (c,),
    }
    layer_shapes = {
        "in_proj_weight": (3 * c, c), "in_proj_bias": (3 * c,), "out_proj.weight": (c, c), "out_proj.bias": (c,),
        "linear1.weight": (ffn, c), "linear1.bias": (ffn,), "linear2.weight": (c, ffn), "linear2.bias": (c,),
        "learned_embed.weight": (h * w, c),
    }
    for key in expected:
        if key in want:
            continue
        tail = key.split(".layers.", 1)[1].split(".", 1)[1]  # e.g. "self_attn.in_proj_weight", "norm2.bias"
        tail = re.sub(r"^(self_attn|multihead_attn)\.", "", tail)
        want[key] = (c,) if tail.startswith("norm") else layer_shapes[tail]
    bad = [(k, _shape(recon[k]), s) for k, s in want.items() if _shape(recon[k]) != s]
    if half * 2 != c or bad:
        raise OfficialCheckpointError(
            "Inconsistent tensor shapes in the reconstruction part (hidden "
            f"{c}, input channels {c_in}, grid {h}×{w}, FFN {ffn}): "
            + "; ".join(f"{k} has {got}, expected {exp}" for k, got, exp in bad[:6])
        )


def convert_reconstruction(recon: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Authors' reconstruction keys (no prefix) → :class:`ReconstructionTransformer` keys; strict."""
    _check_reconstruction(recon)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in recon.items():
        for pattern, template in _RECON_RULES:
            m = re.fullmatch(pattern, key)
            if m:
                out[m.expand(template)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        hint = " (a pre-norm model: normalize_before=True is not supported)" if any(
            k.startswith("transformer.encoder.norm") for k in unknown) else ""
        raise OfficialCheckpointError(f"Unknown reconstruction tensor(s){hint}: {unknown[:8]}")
    return out


def _backbone_stages(backbone: Mapping[str, torch.Tensor]) -> list[tuple[int, int]]:
    """(stage, index in stage) for each flattened block; a stage ends where the output channels change."""
    blocks = sorted({int(m.group(1)) for k in backbone if (m := re.match(r"_blocks\.(\d+)\.", k))})
    if blocks != list(range(len(blocks))):
        raise OfficialCheckpointError(f"Backbone blocks are not numbered 0..n-1: {blocks[:40]}")
    positions = []
    stage, index, previous = 0, 0, None
    for i in blocks:
        key = f"_blocks.{i}._project_conv.weight"
        if key not in backbone:
            raise OfficialCheckpointError(f"Backbone tensor '{key}' is missing.")
        channels = backbone[key].shape[0]
        if previous is not None and channels != previous:
            stage, index = stage + 1, 0
        positions.append((stage, index))
        index += 1
        previous = channels
    return positions


def convert_backbone(backbone: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lukemelas EfficientNet keys (as in the authors' backbone) → timm ``tf_efficientnet_*`` keys; strict."""
    if not backbone:
        return {}
    positions = _backbone_stages(backbone)
    expanded = {i for i in range(len(positions)) if f"_blocks.{i}._expand_conv.weight" in backbone}
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in backbone.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+)\.(\w+)", key)
        if m:
            i, module, param = int(m.group(1)), m.group(2), m.group(3)
            table = _BLOCK_EXPANDED if i in expanded else _BLOCK_DEPTHWISE
            if module in table:
                stage, j = positions[i]
                out[f"blocks.{stage}.{j}.{table[module]}.{param}"] = value
                continue
        m = re.fullmatch(r"(_\w+)\.(\w+)", key)
        if m and m.group(1) in _BACKBONE_TOP:
            out[f"{_BACKBONE_TOP[m.group(1)]}.{m.group(2)}"] = value
            continue
        unknown.append(key)
    if unknown:
        raise OfficialCheckpointError(f"Unknown backbone tensor(s) (not lukemelas EfficientNet names): {unknown[:8]}")
    return out


def convert_official_state_dict(official: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' state dict → keys of :class:`UniADModel`'s ``state_dict``.

    Accepts the whole ``ckpt.pth.tar`` dict, its ``state_dict``, keys with or without ``module.`` /
    ``module.reconstruction.`` prefixes, and reconstruction-only dicts. Every tensor is mapped or an
    :class:`OfficialCheckpointError` names the ones that are not; missing tensors and inconsistent shapes
    are errors too. Backbone tensors become ``backbone.module.<timm tf_efficientnet name>``.
    """
    backbone, recon = split_official(official)
    if not recon:
        raise OfficialCheckpointError("No reconstruction tensors found: this is not a UniAD checkpoint.")
    out = {f"reconstruction.{k}": v for k, v in convert_reconstruction(recon).items()}
    out.update({f"backbone.module.{k}": v for k, v in convert_backbone(backbone).items()})
    return out


def load_official_state_dict(model: torch.nn.Module, official: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Convert and load into a :class:`UniADModel`; every reconstruction tensor must fit exactly.

    Backbone tensors of blocks after the model's last tap (and the classifier head) are not used — the model
    never computes them; any other backbone mismatch is an error. Without backbone tensors in the file the
    model's own (timm) backbone weights stay. Returns ``{"ignored": [...], "kept": [...]}``.
    """
    converted = convert_official_state_dict(official)
    target = model.state_dict()
    recon_target = {k for k in target if k.startswith("reconstruction.")}
    recon_given = {k for k in converted if k.startswith("reconstruction.")}
    problems = []
    if recon_target - recon_given:
        problems.append(f"missing for this model: {sorted(recon_target - recon_given)[:6]}")
    if recon_given - recon_target:
        problems.append(f"not in this model: {sorted(recon_given - recon_target)[:6]}")
    bad = [(k, tuple(converted[k].shape), tuple(target[k].shape)) for k in recon_given & recon_target
           if converted[k].shape != target[k].shape]
    problems += [f"{k}: checkpoint {a} vs model {b}" for k, a, b in bad[:6]]
    if problems:
        raise OfficialCheckpointError(
            "The checkpoint does not fit this UniAD configuration (check taps, feature_size, hidden_dim, "
            "num_encoder_layers, num_decoder_layers, dim_feedforward against the authors' config): "
            + "; ".join(problems)
        )
    state = dict(target)
    ignored: list[str] = []
    kept: list[str] = []
    backbone_given = {k for k in converted if k.startswith("backbone.")}
    if backbone_given:
        backbone_target = {k for k in target if k.startswith("backbone.")}
        missing = sorted(k for k in backbone_target - backbone_given if not k.endswith("num_batches_tracked"))
        mismatched = [k for k in backbone_target & backbone_given if converted[k].shape != target[k].shape]
        if missing or mismatched:
            raise OfficialCheckpointError(
                f"The checkpoint's backbone does not fit `backbone`='{getattr(model, 'backbone_name', '?')}': "
                f"missing {missing[:5]}, shape mismatch "
                + str([(k, tuple(converted[k].shape), tuple(target[k].shape)) for k in mismatched[:5]])
                + " (the authors' backbone is tf_efficientnet_b4 with taps 1, 5, 9, 21)."
            )
        ignored = sorted(backbone_given - backbone_target)
    else:
        kept = sorted(k for k in target if k.startswith("backbone."))
        warnings.warn("The checkpoint has no backbone tensors; the backbone keeps its timm weights.", stacklevel=2)
    for key in recon_given | (backbone_given & set(target)):
        state[key] = converted[key].to(dtype=target[key].dtype)
    model.load_state_dict(state, strict=True)
    return {"ignored": ignored, "kept": kept}


def _main(argv: list[str] | None = None) -> None:  # pragma: no cover - thin CLI wrapper
    """``python -m anomaly_zoo.models.uniad.convert ckpt.pth.tar out.pt``: write the converted state dict."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", help="the authors' ckpt.pth.tar")
    parser.add_argument("output", help="where to write the converted UniADModel state dict (torch.save)")
    args = parser.parse_args(argv)
    converted = convert_official_state_dict(load_official_file(args.official))
    torch.save(converted, args.output)
    print(f"{len(converted)} tensors written to {args.output}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    _main()
