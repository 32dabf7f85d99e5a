"""Parameter count and forward cost per clip (one clip, eval mode).

    python -m former_dfer_jax.flops --config=configs/dfew.py [--ablations]

The counts (`flops`, `macs`) are those of `former_dfer_jax.models.complexity`.
"""

from __future__ import annotations

import copy
from typing import Any

import ml_collections
from absl import app, flags

from former_dfer_jax import ablations, cli
from former_dfer_jax.models.complexity import model_complexity
from former_dfer_jax.training import config_checks

# The paper's complexity column (GFLOPs, i.e. multiply-adds). Its 9.11 is the model with
# the depths of its text, S-Former N = 3 and T-Former M = 3 (the code's default N = 1).
PAPER_GFLOPS = {'resnet18_gru': 7.78, 'depths_3_3': 9.11}


def _describe(model_config: ml_collections.ConfigDict) -> tuple[str, str, str]:
    """(spatial, temporal, depths) columns of the ablation table."""
    s, t = model_config.spatial, model_config.temporal
    trunk = f'ResNet{model_config.resnet_depth}'
    if s.enabled:
        where = 'conv5' if s.stage == 'layer4' else 'conv4'
        pe = '' if s.position_embedding else ' no PE'
        spatial = f'{trunk}+S-Former@{where}{pe}'
    else:
        spatial = trunk
    if t.kind == 'transformer':
        pooling = 'cls' if t.pooling == 'class_token' else 'mean'
        pe = '' if t.position_embedding else ' no PE'
        temporal = f'T-Former ({pooling}{pe})'
        depth_m = str(t.depth)
    else:
        temporal = f'{t.kind.upper()} {t.rnn_hidden_size}'
        depth_m = '-'
    depth_n = str(s.depth) if s.enabled else '-'
    return spatial, temporal, f'{depth_n},{depth_m}'


def format_single(result: dict[str, Any], name: str) -> str:
    _, t, h, w, _ = result['input_shape']
    lines = [
        f'{name}: one clip of {t} frames of {h}x{w}, eval mode',
        f'  parameters:                 {result["params"]:,}',
        f'  FLOPs (XLA cost analysis):  {result["flops"] / 1e9:.3f} G',
        f'  MACs  (XLA FLOPs / 2):      {result["flops"] / 2e9:.3f} G',
        f"  MACs  (conv + matmul, padded windows; the paper's count): {result['macs'] / 1e9:.3f} G",
    ]
    return '\n'.join(lines)


def ablation_rows(
    base_config: ml_collections.ConfigDict,
) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(name, config) of every ablation variant applied to `base_config`."""
    rows = [('former_dfer', base_config)]
    for name in ablations.table_variants():
        config = copy.deepcopy(base_config)
        ablations.apply_variant(config, name)
        rows.append((name, config))
    return rows


def format_table(results: list[tuple[str, ml_collections.ConfigDict, dict[str, Any]]]) -> str:
    header = (
        f'{"variant":<22} {"spatial":<30} {"temporal":<22} {"N,M":<5} {"params":>12} '
        f'{"GFLOPs(XLA)":>11} {"GMACs":>7} {"paper":>6}'
    )
    lines = [header, '-' * len(header)]
    for name, config, r in results:
        spatial, temporal, depths = _describe(config.model)
        paper = PAPER_GFLOPS.get(name)
        lines.append(
            f'{name:<22} {spatial:<30} {temporal:<22} {depths:<5} {r["params"]:>12,} '
            f'{r["flops"] / 1e9:>11.3f} {r["macs"] / 1e9:>7.3f} '
            f'{"" if paper is None else f"{paper:.2f}":>6}'
        )
    return '\n'.join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    FLAGS = flags.FLAGS
    config = FLAGS.config
    config_checks.validate(config)
    print(format_single(model_complexity(config.model), 'Former-DFER'))
    if FLAGS.ablations:
        results = []
        for name, variant in ablation_rows(config):
            results.append((name, variant, model_complexity(variant.model)))
        print()
        print(format_table(results))
        print(
            '\nGMACs: conv + matmul multiply-accumulates with full (zero-padded) windows, '
            "the paper's count; GFLOPs(XLA): XLA's cost analysis (multiply-add = 2, "
            'elementwise ops included, padded taps excluded).'
        )


def _define_flags() -> None:
    cli.define_config_flags()
    flags.DEFINE_bool('ablations', False, 'Also print the table of every ablation variant.')


def entry_point() -> None:
    """The `former-dfer-flops` command (also `python -m former_dfer_jax.flops`)."""
    _define_flags()
    cli.run(main)


if __name__ == '__main__':
    entry_point()
