"""The ablation variants of the paper's Tables 1-3, as changes to `config.model`.

`configs/ablations.py:<variant>` applies them to the reference recipe; `flops --ablations`
tabulates their cost; `variant_spec` gives a variant's ModelSpec without any config file:

    FormerDFER(variant_spec('resnet18_gru', num_classes=11), rngs=nnx.Rngs(0))

`depths_N_M` sets the S-Former depth N and the T-Former depth M (any integers); the other
variants keep the reference's depths (N = 1, M = 3).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import ml_collections

from former_dfer_jax import default_config
from former_dfer_jax.models import ModelSpec


def _no_s_former(m: ml_collections.ConfigDict) -> None:
    m.spatial.enabled = False


def _resnet18_gru(m):
    _no_s_former(m)
    m.temporal.kind = 'gru'


def _resnet18_lstm(m):
    _no_s_former(m)
    m.temporal.kind = 'lstm'


def _resnet34_gru(m):
    _resnet18_gru(m)
    m.resnet_depth = 34


def _resnet18_sformer_gru(m):
    m.temporal.kind = 'gru'


def _resnet18_tformer(m):
    _no_s_former(m)


def _no_spatial_pe(m):
    m.spatial.position_embedding = False


def _no_temporal_pe(m):
    m.temporal.position_embedding = False


def _sformer_after_conv5(m):
    # On the 512-channel layer4 map the tokens are twice as wide as on layer3, so the
    # attention and MLP widths double too (8 heads of 64, MLP 1024: the T-Former's
    # widths); then global average pooling as usual.
    m.spatial.stage = 'layer4'
    m.spatial.head_dim = 64
    m.spatial.mlp_dim = 1024


def _temporal_mean(m):
    m.temporal.pooling = 'mean'


VARIANTS: dict[str, Callable[[ml_collections.ConfigDict], None]] = {
    # Table 1: baselines (ResNet-18 per frame, no S-Former).
    'resnet18_gru': _resnet18_gru,
    'resnet18_lstm': _resnet18_lstm,
    # Table 2: components.
    'resnet34_gru': _resnet34_gru,
    'resnet18_sformer_gru': _resnet18_sformer_gru,
    'resnet18_tformer': _resnet18_tformer,
    'no_spatial_pe': _no_spatial_pe,
    'no_temporal_pe': _no_temporal_pe,
    'sformer_after_conv5': _sformer_after_conv5,
    'temporal_mean': _temporal_mean,
}
# Table 3: the (N, M) pairs the paper reports; any depths_N_M works.
PAPER_DEPTHS = ((1, 1), (3, 1), (1, 3), (3, 3), (6, 3), (3, 6), (6, 6))
_DEPTHS = re.compile(r'depths_(\d+)_(\d+)')


def table_variants() -> list[str]:
    """The variants of the paper's tables, in its order."""
    return [*VARIANTS, *(f'depths_{n}_{m}' for n, m in PAPER_DEPTHS)]


def apply_variant(config: ml_collections.ConfigDict, variant: str) -> None:
    """Changes `config.model` in place into `variant`."""
    match = _DEPTHS.fullmatch(variant)
    if match:
        config.model.spatial.depth = int(match.group(1))
        config.model.temporal.depth = int(match.group(2))
    elif variant in VARIANTS:
        VARIANTS[variant](config.model)
    else:
        from former_dfer_jax.training.config_checks import ConfigError  # data & training: only here

        raise ConfigError(
            f'unknown ablation variant {variant!r}; valid: {", ".join(VARIANTS)}, '
            'depths_N_M (S-Former depth N, T-Former depth M, e.g. depths_3_6)'
        )


def variant_spec(variant: str, **fields: Any) -> ModelSpec:
    """The ModelSpec of the reference model changed into `variant`, with `fields` (e.g.
    num_classes=11, image_size=64) replaced on top."""
    config = default_config.get_config()
    apply_variant(config, variant)
    return dataclasses.replace(ModelSpec.from_config(config.model), **fields)
