"""Former-DFER in Flax NNX.

from former_dfer_jax.models import build_model
model = build_model(config.model, rngs=nnx.Rngs(0))
"""

from former_dfer_jax.models.former_dfer import (
    FormerDFER,
    ModelSpec,
    SpatialSpec,
    TemporalSpec,
    build_abstract_model,
    build_model,
    count_parameters,
)

__all__ = [
    'FormerDFER',
    'ModelSpec',
    'SpatialSpec',
    'TemporalSpec',
    'build_abstract_model',
    'build_model',
    'count_parameters',
]
