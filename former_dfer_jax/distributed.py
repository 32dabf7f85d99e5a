"""Multi-process start-up: `jax.distributed` from flags or the environment.

One process per host (or per GPU) runs the same command. The coordinator address,
process count and process id come from flags, else from the environment where JAX
detects a cluster itself (SLURM, Open MPI, Kubernetes/GKE, Cloud TPU).
"""

from __future__ import annotations

import logging
import os

import jax
from absl import flags

COORDINATOR = flags.DEFINE_string(
    'coordinator_address',
    None,
    'host:port of process 0 for multi-process runs (env: JAX_COORDINATOR_ADDRESS).',
)
NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes of a multi-process run (env: JAX_NUM_PROCESSES).'
)
PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, "This process's id, 0..num_processes-1 (env: JAX_PROCESS_ID)."
)
MULTIHOST = flags.DEFINE_bool(
    'multihost',
    False,
    'Initialise jax.distributed from the cluster environment (SLURM, MPI, ...) even '
    'without a coordinator address.',
)

_CLUSTER_ENV = ('SLURM_JOB_ID', 'OMPI_COMM_WORLD_SIZE')


def initialize_from_flags() -> None:
    """Calls `jax.distributed.initialize` when a multi-process run is asked for."""
    address = COORDINATOR.value or os.environ.get('JAX_COORDINATOR_ADDRESS')
    num = NUM_PROCESSES.value or _int_env('JAX_NUM_PROCESSES')
    pid = PROCESS_ID.value if PROCESS_ID.value is not None else _int_env('JAX_PROCESS_ID')
    if address:
        if num is None or pid is None:
            raise ValueError(
                '--coordinator_address needs --num_processes and --process_id '
                '(or JAX_NUM_PROCESSES / JAX_PROCESS_ID)'
            )
        _use_gloo_on_cpu()
        jax.distributed.initialize(address, num_processes=num, process_id=pid)
    elif MULTIHOST.value:
        _use_gloo_on_cpu()
        jax.distributed.initialize()  # auto-detected cluster
    else:
        if any(name in os.environ for name in _CLUSTER_ENV):
            logging.info(
                'A cluster environment is set but --multihost is not: running as a single process.'
            )
        return
    logging.info(
        'jax.distributed: process %d of %d, %d local / %d global devices.',
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def _use_gloo_on_cpu() -> None:
    # CPU-only multi-process runs (tests, CPU clusters) need a cross-process collective
    # implementation; GPUs use NCCL regardless of this setting.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None
