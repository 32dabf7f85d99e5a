"""Former-DFER in Flax NNX: one model class, `FormerDFER`, described by a `ModelSpec`.

    from flax import nnx
    from former_dfer_jax.models import FormerDFER, ModelSpec
    model = FormerDFER(ModelSpec(num_classes=11), rngs=nnx.Rngs(0))
    logits = model(clips)  # clips [B, 16, 112, 112, 3] in [0, 1] -> [B, 11]

`build_model(config.model, rngs=...)` builds one from a config (`ModelSpec.from_config`
rejects unknown keys); `former_dfer_jax.ablations.variant_spec(name)` gives the paper's
variants. Modules: former_dfer (the model and its spec), resnet (the ResNet-18/34 trunk),
spatial (CS-Former: S-Former inside the trunk), temporal (T-Former, GRU, LSTM),
transformer and layers (shared blocks), conv (convolutions chosen per platform).
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
