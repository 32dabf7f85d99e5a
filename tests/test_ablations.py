"""configs/ablations.py: every variant of the paper's Tables 1-3 by name."""

from __future__ import annotations

import pytest

from configs import ablations, default
from former_dfer_jax.flops import _describe


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

    reference, config = flat(default.get_config()), ablations.get_config(variant)
    got = flat(config)
    assert {k: v for k, v in got.items() if reference[k] != v} == changes
    # Nothing outside the model changes.
    rest = default.get_config().to_dict()
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
