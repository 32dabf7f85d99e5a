"""configs/ablations.py: every variant of the paper's Tables 1-3 by name."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import ablations
from former_dfer_jax import ablations as variants
from former_dfer_jax import default_config
from former_dfer_jax.flops import _describe
from former_dfer_jax.models import ModelSpec, build_model
from former_dfer_jax.training import steps
from tests.tiny import random_clips, tiny_config


def test_unknown_or_missing_variant_lists_the_valid_names():
    for bad in ('resnet50_gru', None, 'depths_3'):
        with pytest.raises(ValueError, match=r'resnet18_gru, resnet18_lstm, .*depths_N_M'):
            ablations.get_config(bad)


@pytest.mark.parametrize(
    'variant, changes',
    [
        ('resnet18_gru', {'spatial.enabled': False, 'temporal.kind': 'gru'}),
        ('resnet18_lstm', {'spatial.enabled': False, 'temporal.kind': 'lstm'}),
        ('resnet34_gru', {'spatial.enabled': False, 'temporal.kind': 'gru', 'resnet_depth': 34}),
        ('resnet18_sformer_gru', {'temporal.kind': 'gru'}),
        ('resnet18_tformer', {'spatial.enabled': False}),
        ('no_spatial_pe', {'spatial.position_embedding': False}),
        ('no_temporal_pe', {'temporal.position_embedding': False}),
        (
            'sformer_after_conv5',
            {'spatial.stage': 'layer4', 'spatial.head_dim': 64, 'spatial.mlp_dim': 1024},
        ),
        ('temporal_mean', {'temporal.pooling': 'mean'}),
        ('depths_3_6', {'spatial.depth': 3, 'temporal.depth': 6}),
        ('depths_12_1', {'spatial.depth': 12, 'temporal.depth': 1}),
    ],
)
def test_each_variant_changes_exactly_its_model_keys(variant, changes):
    def flat(config):
        return _flatten(config.model.to_dict())

    reference, config = flat(default_config.get_config()), ablations.get_config(variant)
    got = flat(config)
    assert {k: v for k, v in got.items() if reference[k] != v} == changes
    # Nothing outside the model changes.
    rest = default_config.get_config().to_dict()
    rest.pop('model')
    mine = config.to_dict()
    mine.pop('model')
    assert mine == rest


def _flatten(tree, prefix=''):
    out = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        out.update(_flatten(value, name + '.') if isinstance(value, dict) else {name: value})
    return out


def test_table_variants_follow_the_paper():
    names = ablations.table_variants()
    assert names[:2] == ['resnet18_gru', 'resnet18_lstm']
    assert names[-7:] == [f'depths_{n}_{m}' for n, m in ablations.PAPER_DEPTHS]
    assert ('3', '3') in {tuple(n.split('_')[1:]) for n in names if n.startswith('depths')}
    for name in names:
        ablations.get_config(name)  # all valid


def test_descriptions():
    assert _describe(ablations.get_config('resnet34_gru').model) == ('ResNet34', 'GRU 512', '-,-')
    spatial, _, depths = _describe(ablations.get_config('sformer_after_conv5').model)
    assert spatial == 'ResNet18+S-Former@conv5' and depths == '1,3'


# The variants that bring a module or code path of their own, which no other test trains:
# the recurrent heads, the S-Former on the layer4 map, mean pooling over frames. The
# others recombine these with the default's modules (trained in test_train) or only
# change depths. Each costs one compilation of a train step, 11-22 s on 2 cores: all 16
# variants would add 3-5 minutes to the suite.
TRAINED_VARIANTS = ['resnet18_gru', 'resnet18_lstm', 'sformer_after_conv5', 'temporal_mean']


@pytest.mark.parametrize('variant', TRAINED_VARIANTS)
def test_variants_with_their_own_modules_take_a_train_step_that_trains_every_parameter(
    variant,
):
    # At the tiny config's size (4 frames of 32x32, batch 4) and without weight decay, so
    # that a parameter moves only if its gradient is nonzero.
    config = tiny_config()
    variants.apply_variant(config, variant)
    config.optimizer.weight_decay = 0.0
    schedule = steps.step_decay_schedule(config.optimizer, steps_per_epoch=1)
    tx = steps.make_optimizer(config.optimizer, schedule)

    @jax.jit
    def init_and_step(batch):
        state = steps.init_train_state(build_model(config.model, rngs=nnx.Rngs(0)), tx)
        new_state, metrics = steps.train_step(state, batch, tx=tx, schedule=schedule)
        moved = jax.tree.map(lambda a, b: jnp.any(a != b), state.params, new_state.params)
        return metrics['loss'], moved

    batch = {'video': random_clips(config, 4), 'label': np.array([0, 3, 5, 6], np.int32)}
    loss, moved = init_and_step(batch)
    assert np.isfinite(float(loss))
    paths = jax.tree_util.tree_leaves_with_path(moved)
    assert [jax.tree_util.keystr(path) for path, m in paths if not m] == []


def test_variant_spec_builds_a_paper_variant_without_a_config_file():
    spec = variants.variant_spec('resnet18_gru', num_classes=11)
    config = default_config.get_config()
    variants.apply_variant(config, 'resnet18_gru')
    assert spec == dataclasses.replace(ModelSpec.from_config(config.model), num_classes=11)
    assert (spec.spatial.enabled, spec.temporal.kind, spec.num_classes) == (False, 'gru', 11)
    assert variants.variant_spec('depths_3_6').spatial.depth == 3
    with pytest.raises(ValueError, match="unknown ablation variant 'resnet50'"):
        variants.variant_spec('resnet50')
