"""Parameter count and forward cost per clip (one clip, eval mode).

    python -m former_dfer_jax.flops --config=configs/dfew.py [--ablations]

Two counts of the forward pass:

* `flops`: XLA's cost analysis of the compiled forward
  (`jax.jit(f).lower(...).compile().cost_analysis()['flops']`). A multiply-add counts
  as 2; elementwise ops (BatchNorm, ReLU, softmax, GELU, residual adds) count too, and
  convolution taps that fall on zero padding do not (XLA counts only valid taps).
* `macs`: multiply-accumulates of the convolutions and matrix products, counted from
  the traced program (jaxpr) with full kernel windows, zero padding included. This is
  what per-layer counters such as thop / ptflops report, and what the paper's
  "GFLOPs" are (its ResNet18+GRU 7.78 is this count for 16 frames at 112x112).

`flops / 2` is a second estimate of multiply-adds; it is below `macs` because the
padded taps of the small 7x7 and 4x4 maps are a large share of those layers' windows.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from flax import nnx

from former_dfer_jax import ablations, cli, config_checks
from former_dfer_jax.models import build_abstract_model, conv, count_parameters

# The paper's complexity column (GFLOPs, i.e. multiply-adds). Its 9.11 is the model with
# the depths of its text, S-Former N = 3 and T-Former M = 3 (the code's default N = 1).
PAPER_GFLOPS = {'resnet18_gru': 7.78, 'depths_3_3': 9.11}


def _subjaxprs(params: dict[str, Any]):
    for value in params.values():
        for item in value if isinstance(value, list | tuple) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def _jaxpr_macs(jaxpr: jax.extend.core.Jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        out = math.prod(eqn.outvars[0].aval.shape)
        if name == 'dot_general':
            (lhs_contract, _), _ = eqn.params['dimension_numbers']
            lhs = eqn.invars[0].aval.shape
            total += out * math.prod(lhs[d] for d in lhs_contract)
        elif name == 'conv_general_dilated':
            rhs = eqn.invars[1].aval.shape
            rhs_spec = eqn.params['dimension_numbers'].rhs_spec  # (out, in, *spatial)
            # The kernel's input-feature dim is already in_channels / groups.
            total += out * math.prod(rhs[d] for d in rhs_spec[1:])
        elif (branch := conv.platform_branch(eqn, 'cuda')) is not None:
            # lax.platform_dependent (models/conv.py's CPU paths): count one platform's
            # program, the plain lax one with full kernel windows.
            total += _jaxpr_macs(branch)
        else:
            repeat = eqn.params.get('length', 1) if name == 'scan' else 1
            total += repeat * sum(_jaxpr_macs(sub) for sub in _subjaxprs(eqn.params))
    return total


def count_macs(fn: Callable[..., Any], *args: Any) -> int:
    """Multiply-accumulates of the convolutions and dot products `fn(*args)` traces to
    (full kernel windows; scan bodies times their length). Args may be abstract."""
    return _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def compiled_flops(compiled: jax.stages.Compiled) -> float | None:
    """XLA's FLOP count of a compiled program, or None where the backend gives none."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per computation
        cost = cost[0] if cost else None
    return float((cost or {}).get('flops', 0.0)) or None


def model_complexity(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Parameters and forward cost of one clip in eval mode, without allocating weights.

    Returns params (learnable), flops (XLA cost analysis of the compiled forward),
    macs (conv + matmul multiply-accumulates, padded windows counted), and the input
    shape the cost is for.
    """
    model = build_abstract_model(model_config)
    model.eval()
    graphdef, state = nnx.split(model)

    def forward(state, clips):
        return nnx.merge(graphdef, state)(clips)

    spec = model.spec
    shape = (1, spec.num_frames, spec.image_size, spec.image_size, 3)
    clips = jax.ShapeDtypeStruct(shape, jnp.float32)
    xla_flops = compiled_flops(jax.jit(forward).lower(state, clips).compile())
    return {
        'params': count_parameters(model),
        'flops': int(xla_flops or 0),
        'macs': count_macs(forward, state, clips),
        'input_shape': shape,
    }


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
