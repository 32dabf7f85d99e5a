"""Former-DFER: CS-Former per frame, T-Former (or a GRU / LSTM) over frames, classifier.

model = build_model(config.model, rngs=nnx.Rngs(0))
logits = model(clips)  # clips [B, T, H, W, 3] in [0, 1] -> logits [B, num_classes]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from former_dfer_jax.models.layers import linear
from former_dfer_jax.models.resnet import STAGE_SIZES, feature_map_size
from former_dfer_jax.models.spatial import CSFormer, SFormer, Tap, no_tap
from former_dfer_jax.models.temporal import GRU, LSTM, POOLINGS, TFormer

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
TEMPORAL_KINDS = ('transformer', 'gru', 'lstm')
SPATIAL_STAGES = ('layer3', 'layer4')
FRAME_FEATURES = 512  # width of the pooled layer4 map, the per-frame vector


# The defaults below are the reference code's model; former_dfer_jax/default_config.py sets the same
# values (a test checks that they agree).
@dataclasses.dataclass(frozen=True)
class SpatialSpec:
    """`config.model.spatial`: the S-Former inside the per-frame ResNet."""

    enabled: bool = True
    stage: str = 'layer3'
    depth: int = 1
    num_heads: int = 8
    head_dim: int = 32
    mlp_dim: int = 512
    position_embedding: bool = True
    dropout: float = 0.0


@dataclasses.dataclass(frozen=True)
class TemporalSpec:
    """`config.model.temporal`: the T-Former, or a GRU / LSTM baseline."""

    kind: str = 'transformer'
    depth: int = 3
    num_heads: int = 8
    head_dim: int = 64
    mlp_dim: int = 1024
    position_embedding: bool = True
    pooling: str = 'class_token'
    rnn_hidden_size: int = 512
    dropout: float = 0.0


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """`config.model` as a validated, hashable value (the model keeps it as static data)."""

    num_classes: int = 7
    image_size: int = 112
    num_frames: int = 16
    resnet_depth: int = 18
    compute_dtype: str = 'float32'
    spatial: SpatialSpec = SpatialSpec()
    temporal: TemporalSpec = TemporalSpec()

    def __post_init__(self):
        problems = []

        def check(ok: bool, message: str):
            if not ok:
                problems.append(message)

        s, t = self.spatial, self.temporal
        check(self.num_classes >= 1, f'num_classes={self.num_classes}: expected >= 1')
        check(self.image_size >= 1, f'image_size={self.image_size}: expected >= 1')
        check(self.num_frames >= 1, f'num_frames={self.num_frames}: expected >= 1')
        check(
            self.resnet_depth in STAGE_SIZES,
            f'resnet_depth={self.resnet_depth}: expected one of {sorted(STAGE_SIZES)}',
        )
        check(
            self.compute_dtype in COMPUTE_DTYPES,
            f'compute_dtype={self.compute_dtype!r}: expected one of {sorted(COMPUTE_DTYPES)}',
        )
        check(s.stage in SPATIAL_STAGES, f'spatial.stage={s.stage!r}: expected {SPATIAL_STAGES}')
        check(t.kind in TEMPORAL_KINDS, f'temporal.kind={t.kind!r}: expected {TEMPORAL_KINDS}')
        check(t.pooling in POOLINGS, f'temporal.pooling={t.pooling!r}: expected {POOLINGS}')
        for name, part in (('spatial', s), ('temporal', t)):
            for key in ('depth', 'num_heads', 'head_dim', 'mlp_dim'):
                value = getattr(part, key)
                check(value >= 1, f'{name}.{key}={value}: expected >= 1')
            check(0 <= part.dropout < 1, f'{name}.dropout={part.dropout}: expected in [0, 1)')
        check(t.rnn_hidden_size >= 1, f'temporal.rnn_hidden_size={t.rnn_hidden_size}')
        if problems:
            raise ValueError('invalid model config:\n  ' + '\n  '.join(problems))

    @classmethod
    def from_config(cls, model_config: Mapping[str, Any]) -> ModelSpec:
        """From `config.model` (a ConfigDict or a dict); unknown keys are an error, so a
        misspelt key never silently falls back to a default."""
        values = dict(model_config)
        spatial = _make(SpatialSpec, values.pop('spatial', {}), 'model.spatial')
        temporal = _make(TemporalSpec, values.pop('temporal', {}), 'model.temporal')
        return _make(cls, values, 'model', spatial=spatial, temporal=temporal)


def _make(cls, values: Mapping[str, Any], where: str, **extra):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f'unknown {where} keys {unknown}; known: {sorted(known)}')
    return cls(**dict(values), **extra)


class FormerDFER(nnx.Module):
    """Clips [B, T, H, W, 3] (NHWC frames, values in [0, 1]) -> float32 logits [B, C].

    Frames are folded into the batch for the per-frame CS-Former (shared weights), the
    frame vectors go through the temporal model, then the linear classifier. Parameters
    and BatchNorm statistics are float32; convs and matmuls run in `compute_dtype`.
    Built in training mode; `model.eval()` switches BatchNorm to the running averages.
    """

    def __init__(self, spec: ModelSpec = ModelSpec(), *, rngs: nnx.Rngs):
        self.spec = spec
        dtype = COMPUTE_DTYPES[spec.compute_dtype]
        s, t = spec.spatial, spec.temporal

        s_former = None
        if s.enabled:
            side = feature_map_size(spec.image_size, s.stage)
            s_former = SFormer(
                CSFormer.stage_width(s.stage),
                side * side,
                s.depth,
                s.num_heads,
                s.head_dim,
                s.mlp_dim,
                s.dropout,
                s.position_embedding,
                dtype=dtype,
                rngs=rngs,
            )
        self.spatial = CSFormer(
            resnet_depth=spec.resnet_depth,
            s_former=s_former,
            stage=s.stage,
            dtype=dtype,
            rngs=rngs,
        )

        if t.kind == 'transformer':
            self.temporal = TFormer(
                FRAME_FEATURES,
                spec.num_frames,
                t.depth,
                t.num_heads,
                t.head_dim,
                t.mlp_dim,
                t.dropout,
                t.position_embedding,
                t.pooling,
                dtype=dtype,
                rngs=rngs,
            )
            clip_features = FRAME_FEATURES
        else:
            rnn = GRU if t.kind == 'gru' else LSTM
            self.temporal = rnn(FRAME_FEATURES, t.rnn_hidden_size, dtype=dtype, rngs=rngs)
            clip_features = t.rnn_hidden_size
        self.classifier = linear(clip_features, spec.num_classes, dtype=dtype, rngs=rngs)

    @staticmethod
    def classifier_path() -> tuple[str, ...]:
        """Where the classifier's variables sit in the model state (for re-initialising it)."""
        return ('classifier',)

    def __call__(self, clips: jax.Array, tap: Tap = no_tap) -> jax.Array:
        """`tap` (for explanations, see `spatial.CSFormer`) also sees 'frame_features'
        [B, T, 512] and 'clip_features' [B, D], the vector the classifier reads."""
        spec = self.spec
        expected = (spec.num_frames, spec.image_size, spec.image_size, 3)
        if clips.ndim != 5 or tuple(clips.shape[1:]) != expected:
            raise ValueError(
                f'expected clips of shape [B, {", ".join(map(str, expected))}] '
                f'(num_frames, image_size, image_size, RGB), got {tuple(clips.shape)}'
            )
        b, t, h, w, c = clips.shape
        frames = clips.astype(COMPUTE_DTYPES[spec.compute_dtype]).reshape(b * t, h, w, c)
        features = tap('frame_features', self.spatial(frames, tap).reshape(b, t, -1))
        clip_features = tap('clip_features', self.temporal(features))
        return self.classifier(clip_features).astype(jnp.float32)


def build_model(model_config: Mapping[str, Any], *, rngs: nnx.Rngs) -> FormerDFER:
    """The model described by `config.model` (see `default_config`), in training mode."""
    return FormerDFER(ModelSpec.from_config(model_config), rngs=rngs)


def build_abstract_model(model_config: Mapping[str, Any]) -> FormerDFER:
    """The model's structure with shapes and dtypes only (no weights computed): the
    target to restore stored weights into."""
    return nnx.eval_shape(lambda: build_model(model_config, rngs=nnx.Rngs(0)))


def count_parameters(model: nnx.Module) -> int:
    """Number of learnable values (nnx.Param; BatchNorm statistics excluded)."""
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
