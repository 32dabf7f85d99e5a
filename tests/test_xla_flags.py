"""The project's XLA flags: added only where the user did not set them, only on the jaxlib
versions they were measured on, and read back correctly."""

from __future__ import annotations

from former_dfer_jax import xla_flags


def test_set_xla_flags_keeps_what_the_user_set(monkeypatch):
    monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=+individual_dot')
    flags = {xla_flags.YNN_FUSION_TYPE: '-individual_convolution', 'xla_cpu_foo': '1'}
    result = xla_flags.set_xla_flags(flags)
    assert result == ('--xla_cpu_experimental_ynn_fusion_type=+individual_dot --xla_cpu_foo=1')
    monkeypatch.delenv('XLA_FLAGS')
    assert xla_flags.set_xla_flags({}) == ''


def test_ynn_convolutions_enabled():
    enabled = xla_flags.ynn_convolutions_enabled
    assert enabled('')
    assert not enabled('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution')
    assert not enabled('--xla_cpu_experimental_ynn_fusion_type=individual_dot')
    assert enabled('--xla_cpu_experimental_ynn_fusion_type=+individual_dot,-reduce')
    assert enabled('--xla_cpu_experimental_ynn_fusion_type=individual_convolution')


def test_default_flags_only_on_measured_jaxlib(monkeypatch):
    monkeypatch.setattr(xla_flags, '_jaxlib_version', lambda: '0.10.2')
    assert xla_flags.default_flags() == xla_flags.DEFAULT_FLAGS
    monkeypatch.setattr(xla_flags, '_jaxlib_version', lambda: '0.11.0')
    assert xla_flags.default_flags() == {}
