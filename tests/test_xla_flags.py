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
    assert xla_flags.default_flags('avx2') == xla_flags.FLAGS_BY_ISA['avx2']
    monkeypatch.setattr(xla_flags, '_jaxlib_version', lambda: '0.11.0')
    assert xla_flags.default_flags('avx2') == {}


def test_default_flags_follow_the_cpu_isa(monkeypatch):
    monkeypatch.setattr(xla_flags, '_jaxlib_version', lambda: '0.10.2')
    monkeypatch.setattr(xla_flags, 'cpu_isa', lambda: 'avx512')
    assert xla_flags.default_flags() == xla_flags.FLAGS_BY_ISA['avx512']
    assert xla_flags.default_flags('other') == {}
    assert set(xla_flags.FLAGS_BY_ISA) == set(xla_flags.ISAS)


def test_cpu_isa_from_cpuinfo_flags():
    isa = xla_flags.cpu_isa
    assert isa({'avx', 'avx2', 'fma', 'avx512f', 'avx512bw', 'amx_tile', 'amx_bf16'}) == 'amx'
    assert isa({'avx', 'avx2', 'fma', 'avx512f', 'avx512_bf16'}) == 'avx512'  # AMD Zen 4
    assert isa({'avx', 'avx2', 'fma'}) == 'avx2'
    assert isa({'sse4_2', 'avx'}) == 'other'
    assert isa(set()) == 'other'
    assert xla_flags.cpu_isa() in xla_flags.ISAS  # this machine, whatever it is
