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


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins a multi-process run: with a coordinator address, as process `process_id` of
    `num_processes`; without one, as the cluster environment says (SLURM, MPI, ...)."""
    if coordinator_address and (num_processes is None or process_id is None):
        raise ValueError(
            'a coordinator address needs num_processes and process_id (--num_processes and '
            '--process_id, or JAX_NUM_PROCESSES and JAX_PROCESS_ID)'
        )
    # CPU-only multi-process runs (tests, CPU clusters) need a cross-process collective
    # implementation; GPUs use NCCL whatever this says.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    if coordinator_address:
        jax.distributed.initialize(
            coordinator_address, num_processes=num_processes, process_id=process_id
        )
    else:
        jax.distributed.initialize()  # auto-detected cluster
    logging.info(
        'jax.distributed: process %d of %d, %d local / %d global devices.',
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def initialize_from_flags() -> None:
    """Calls `initialize` when the flags or the environment ask for several processes."""
    address = COORDINATOR.value or os.environ.get('JAX_COORDINATOR_ADDRESS')
    num = NUM_PROCESSES.value or _int_env('JAX_NUM_PROCESSES')
    pid = PROCESS_ID.value if PROCESS_ID.value is not None else _int_env('JAX_PROCESS_ID')
    if address:
        initialize(address, num, pid)
    elif MULTIHOST.value:
        initialize()
    elif any(name in os.environ for name in _CLUSTER_ENV):
        logging.info('A cluster environment is set but --multihost is not: running as one process.')


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None
