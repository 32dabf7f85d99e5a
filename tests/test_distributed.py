"""Multi-process data parallelism: two processes on 127.0.0.1 (CPU backend, gloo
collectives) train like one process with two local devices.

The runs train at learning rate 0: the parameters stay at their (seeded) initial values,
so every step sees the same parameters in both set-ups and nothing chaotic can grow (see
test_train for why trajectories of this ReLU network may not be compared), while the
gradients still go through the cross-process sums into the momentum, the BatchNorm
statistics through the global batch, and the epoch through evaluation and checkpoints.
"""

import importlib
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from former_dfer_jax import cli
from former_dfer_jax.training import distributed
from tests.test_cli import run_entry_point
from tests.test_train import BATCH_STATS_RTOL, HEAD_GRADIENT_RTOL, SPATIAL_GRADIENT_RTOL
from tests.tiny import env_with_devices, relative_difference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKER = """
import sys
import jax
import numpy as np
import optax
from former_dfer_jax.training import distributed, train
from former_dfer_jax.training.results import RunResults
from tests.tiny import gradient_groups, tiny_config

workdir, out, address, num_processes, process_id = sys.argv[1:6]
if int(num_processes) > 1:
    distributed.initialize(address, int(num_processes), int(process_id))
assert jax.device_count() == 2, jax.devices()
results_writes = []  # the workdirs this process wrote results.json into
write = RunResults.write
def recorded_write(self, directory):
    results_writes.append(directory)
    write(self, directory)
RunResults.write = recorded_write
config = tiny_config()
config.optimizer.learning_rate = 0.0  # see the module docstring
config.num_epochs = 1
state = train.train_and_evaluate(config, workdir)
def flat(tree):
    return np.concatenate([np.ravel(np.asarray(jax.device_get(x))) for x in jax.tree.leaves(tree)])
trace = optax.tree_utils.tree_get(state.opt_state, 'trace')  # the gradients' momentum
momentum = {f'momentum_{k}': v for k, v in gradient_groups(jax.device_get(trace)).items()}
np.savez(
    out, params=flat(state.params), batch_stats=flat(state.rest), **momentum,
    results_writes=len(results_writes),
)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _saved(path) -> dict[str, np.ndarray]:
    return dict(np.load(path))


def _event_files(workdir) -> list[str]:
    return [name for name in os.listdir(workdir) if name.startswith('events.out.tfevents.')]


def test_two_processes_train_like_one_process_with_two_devices(tmp_path):
    address = f'127.0.0.1:{_free_port()}'
    env = env_with_devices(1)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                '-c',
                _WORKER,
                str(tmp_path / 'multi'),
                str(tmp_path / f'process_{i}.npz'),
                address,
                '2',
                str(i),
            ],
            env=env,
            cwd=ROOT,
        )
        for i in range(2)
    ]
    try:
        codes = [w.wait(timeout=600) for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert codes == [0, 0]
    single_env = env_with_devices(2)
    subprocess.run(
        [
            sys.executable,
            '-c',
            _WORKER,
            str(tmp_path / 'single'),
            str(tmp_path / 'single.npz'),
            '',
            '1',
            '0',
        ],
        env=single_env,
        cwd=ROOT,
        check=True,
        timeout=600,
    )

    first, second = _saved(tmp_path / 'process_0.npz'), _saved(tmp_path / 'process_1.npz')
    single = _saved(tmp_path / 'single.npz')
    # Only process 0 writes results.json (once: one epoch) and TensorBoard events (one
    # events file per writing process); both write the checkpoints.
    assert (first.pop('results_writes'), second.pop('results_writes')) == (1, 0)
    assert single.pop('results_writes') == 1
    assert len(_event_files(tmp_path / 'multi')) == 1 == len(_event_files(tmp_path / 'single'))
    assert (tmp_path / 'multi' / 'results.json').exists()
    assert os.listdir(tmp_path / 'multi' / 'checkpoints' / 'latest')
    for key in first:  # every process holds the same replicated state
        np.testing.assert_array_equal(first[key], second[key])
    np.testing.assert_array_equal(first['params'], single['params'])  # lr 0: unchanged
    # Tolerances as argued and measured in test_train (same quantities, 7 steps here).
    assert relative_difference(single['batch_stats'], first['batch_stats']) < BATCH_STATS_RTOL
    head = relative_difference(single['momentum_head'], first['momentum_head'])
    assert head < HEAD_GRADIENT_RTOL
    spatial = relative_difference(single['momentum_spatial'], first['momentum_spatial'])
    assert spatial < SPATIAL_GRADIENT_RTOL


@pytest.mark.parametrize('args', [('127.0.0.1:1234', None, 0), ('127.0.0.1:1234', 2, None)])
def test_a_coordinator_needs_the_process_count_and_id(args):
    with pytest.raises(ValueError, match='num_processes'):
        distributed.initialize(*args)


# ---- jax.distributed from flags or the environment ------------------------------------------

_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


@pytest.fixture
def joined(monkeypatch):
    """`joined(**flag_values)`: the (coordinator_address, num_processes, process_id) that
    `distributed.initialize_from_flags` passes to `distributed.initialize` under those
    flags (the others at their defaults), or None when it joins no multi-process run. The
    environment starts without jax.distributed or cluster variables."""
    for name in (*_ENV, 'SLURM_JOB_ID', 'OMPI_COMM_WORLD_SIZE'):
        monkeypatch.delenv(name, raising=False)
    calls = []

    def initialize(coordinator_address=None, num_processes=None, process_id=None):
        calls.append((coordinator_address, num_processes, process_id))

    monkeypatch.setattr(distributed, 'initialize', initialize)
    was_parsed = flags.FLAGS.is_parsed()
    with flagsaver.flagsaver():
        flags.FLAGS.mark_as_parsed()

        def join(**flag_values):
            defaults = dict(coordinator_address=None, num_processes=None, process_id=None)
            for name, value in {**defaults, 'multihost': False, **flag_values}.items():
                setattr(flags.FLAGS, name, value)
            calls.clear()
            distributed.initialize_from_flags()
            assert len(calls) <= 1, calls
            return calls[0] if calls else None

        yield join
    if not was_parsed:
        flags.FLAGS.unparse_flags()


def _set_env(monkeypatch, address: str, num_processes: str, process_id: str) -> None:
    for name, value in zip(_ENV, (address, num_processes, process_id), strict=True):
        monkeypatch.setenv(name, value)


def test_one_process_joins_nothing(joined):
    assert joined() is None


def test_the_flags_give_the_coordinator_the_process_count_and_id(joined):
    flag_values = dict(coordinator_address='10.0.0.1:1234', num_processes=4, process_id=3)
    assert joined(**flag_values) == ('10.0.0.1:1234', 4, 3)


def test_the_environment_gives_them_without_flags(joined, monkeypatch):
    _set_env(monkeypatch, '10.0.0.1:1234', '4', '0')
    assert joined() == ('10.0.0.1:1234', 4, 0)  # process 0 is an id, not "unset"


def test_flags_take_precedence_over_the_environment(joined, monkeypatch):
    _set_env(monkeypatch, '10.0.0.1:1234', '4', '2')
    assert joined(coordinator_address='10.0.0.9:99', num_processes=8, process_id=0) == (
        '10.0.0.9:99',
        8,
        0,
    )
    assert joined(process_id=1) == ('10.0.0.1:1234', 4, 1)  # the rest from the environment


def test_multihost_lets_jax_detect_the_cluster(joined, monkeypatch):
    monkeypatch.setenv('SLURM_JOB_ID', '42')
    assert joined() is None  # a cluster alone does not make a multi-process run
    assert joined(multihost=True) == (None, None, None)


class _JoinedError(Exception):
    """Raised by the stand-in for `distributed.initialize`: the tool read its flags."""


@pytest.mark.parametrize('tool', ['main', 'evaluate', 'cross_validate'])
def test_every_entry_point_joins_jax_distributed_before_any_work(tool, monkeypatch, tmp_path):
    entry_point = importlib.import_module(f'former_dfer_jax.{tool}')
    for name in (*_ENV, 'SLURM_JOB_ID', 'OMPI_COMM_WORLD_SIZE'):
        monkeypatch.delenv(name, raising=False)
    calls = []

    def initialize(*args):
        calls.append(args)
        raise _JoinedError

    monkeypatch.setattr(distributed, 'initialize', initialize)
    status = run_entry_point(
        entry_point,
        f'--config={ROOT}/configs/synthetic.py',
        f'--workdir={tmp_path}',
        '--coordinator_address=10.0.0.1:1234',
        '--num_processes=2',
        '--process_id=1',
    )
    assert status == 1  # the stand-in's exception, reported as a bug
    assert calls == [('10.0.0.1:1234', 2, 1)]
    assert os.listdir(tmp_path) == [cli.CRASH_LOG]  # nothing else: no work was done
    assert '_JoinedError' in (tmp_path / cli.CRASH_LOG).read_text()
