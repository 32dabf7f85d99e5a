"""Parameter count and forward cost of one clip (eval mode), without allocating weights.

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

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from former_dfer_jax.models import conv
from former_dfer_jax.models.former_dfer import build_abstract_model, count_parameters


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
