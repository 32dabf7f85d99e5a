"""XLA flags the project sets by default. Call `set_xla_flags()` before JAX starts its
backend (in practice: before the first `import jax` of the process).

XLA reads `XLA_FLAGS` once per process. A flag the user already set there (any value) is
left alone, and nothing is added on jaxlib versions where the flags were not measured
(an unknown flag is a fatal error in XLA, and the experimental flags below may go away).

The flag set is chosen by the CPU's instruction set (`cpu_isa()`: /proc/cpuinfo's flags) at
start-up. Measured with jaxlib 0.10.2 on the Former-DFER train step (16 x 112 x 112, batch 4):

* `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` (every ISA): XLA:CPU hands
  every convolution it can to YNNPACK by default. On 2 AMD EPYC cores with AVX2, its own
  (Eigen) convolutions are ~2x faster for the ResNet's forward and input-gradient
  convolutions and ~20x faster for the kernel gradients (whose window is a whole feature
  map). On 2 AMD EPYC (Zen 4, AVX-512) cores the two are level on the whole step (1.04 vs
  1.08 clips per CPU-second, 3 interleaved rounds) but YNNPACK's take 2-4x longer to
  compile, so the flag stays. Dots stay with YNNPACK.
* Tried on AVX-512 and not kept (level within the machine's noise, +-5%):
  `--xla_cpu_prefer_vector_width=512` (1.09), oneDNN dots
  (`--xla_cpu_experimental_onednn_fusion_type=dot`, 1.10).
* 'amx' (Intel Sapphire Rapids and later) was not measured here: it gets the AVX-512 set.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

YNN_FUSION_TYPE = 'xla_cpu_experimental_ynn_fusion_type'
ISAS = ('amx', 'avx512', 'avx2', 'other')
# The flags per CPU instruction set (see the module doc for what each was measured on).
FLAGS_BY_ISA: dict[str, dict[str, str]] = {
    'amx': {YNN_FUSION_TYPE: '-individual_convolution'},
    'avx512': {YNN_FUSION_TYPE: '-individual_convolution'},
    'avx2': {YNN_FUSION_TYPE: '-individual_convolution'},
    'other': {},
}
MEASURED_JAXLIB = ('0.10.',)  # version prefixes the flags were measured (and exist) on


def _jaxlib_version() -> str:
    try:
        return importlib.metadata.version('jaxlib')
    except importlib.metadata.PackageNotFoundError:
        return ''


def _cpu_flags() -> set[str]:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_isa(cpu_flags: set[str] | None = None) -> str:
    """This CPU's instruction-set class, one of ISAS: 'amx' (AVX-512 with AMX tiles, Intel
    Sapphire Rapids and later), 'avx512', 'avx2', or 'other' (older x86, other
    architectures, or no /proc/cpuinfo to read). `cpu_flags`: /proc/cpuinfo's flags."""
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    if platform.machine().lower() not in ('x86_64', 'amd64') and cpu_flags is None:
        return 'other'
    if 'avx512f' in flags:
        return 'amx' if 'amx_tile' in flags else 'avx512'
    if 'avx2' in flags and 'fma' in flags:
        return 'avx2'
    return 'other'


def default_flags(isa: str | None = None) -> dict[str, str]:
    """FLAGS_BY_ISA[isa] (default: this CPU's) on the jaxlib versions they were measured
    on, else none."""
    if not _jaxlib_version().startswith(MEASURED_JAXLIB):
        return {}
    return dict(FLAGS_BY_ISA[cpu_isa() if isa is None else isa])


def _parse(xla_flags: str) -> dict[str, str]:
    flags = {}
    for item in xla_flags.split():
        name, _, value = item.lstrip('-').partition('=')
        flags[name] = value
    return flags


def set_xla_flags(flags: dict[str, str] | None = None) -> str:
    """Appends `flags` (default: `default_flags()`) to os.environ['XLA_FLAGS'], skipping
    any flag already named there. Returns the resulting XLA_FLAGS."""
    flags = default_flags() if flags is None else flags
    current = os.environ.get('XLA_FLAGS', '')
    named = _parse(current)
    extra = [f'--{name}={value}' for name, value in flags.items() if name not in named]
    if extra:
        os.environ['XLA_FLAGS'] = ' '.join([current, *extra]).strip()
    return os.environ.get('XLA_FLAGS', '')


def ynn_convolutions_enabled(xla_flags: str | None = None) -> bool:
    """Whether XLA:CPU hands convolutions to YNNPACK under `xla_flags` (default: the
    environment's XLA_FLAGS): jaxlib 0.10's default, unless the YNN fusion-type flag
    removes 'individual_convolution' ('-' item) or overrides the list without it."""
    if xla_flags is None:
        xla_flags = os.environ.get('XLA_FLAGS', '')
    value = _parse(xla_flags).get(YNN_FUSION_TYPE)
    if value is None:
        return True
    items = [item.strip().lower() for item in value.split(',') if item.strip()]
    if items and all(item[0] in '+-' for item in items):
        return '-individual_convolution' not in items
    return 'individual_convolution' in items
