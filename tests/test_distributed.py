"""Multi-process data parallelism: two processes on 127.0.0.1 (CPU backend, gloo
collectives) train like one process with two local devices.

The runs train at learning rate 0: the parameters stay at their (seeded) initial values,
so every step sees the same parameters in both set-ups and nothing chaotic can grow (see
test_train for why trajectories of this ReLU network may not be compared), while the
gradients still go through the cross-process sums into the momentum, the BatchNorm
statistics through the global batch, and the epoch through evaluation and checkpoints.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.test_train import BATCH_STATS_RTOL, HEAD_GRADIENT_RTOL, SPATIAL_GRADIENT_RTOL
from tests.tiny import env_with_devices, relative_difference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKER = """
import sys
import jax
import numpy as np
import optax
from former_dfer_jax import distributed, train
from tests.tiny import gradient_groups, tiny_config

workdir, out, address, num_processes, process_id = sys.argv[1:6]
if int(num_processes) > 1:
    distributed.initialize(address, int(num_processes), int(process_id))
assert jax.device_count() == 2, jax.devices()
config = tiny_config()
config.optimizer.learning_rate = 0.0  # see the module docstring
config.num_epochs = 1
state = train.train_and_evaluate(config, workdir)
def flat(tree):
    return np.concatenate([np.ravel(np.asarray(jax.device_get(x))) for x in jax.tree.leaves(tree)])
trace = optax.tree_utils.tree_get(state.opt_state, 'trace')  # the gradients' momentum
momentum = {f'momentum_{k}': v for k, v in gradient_groups(jax.device_get(trace)).items()}
np.savez(out, params=flat(state.params), batch_stats=flat(state.rest), **momentum)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _saved(path) -> dict[str, np.ndarray]:
    return dict(np.load(path))


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
    for key in first:  # every process holds the same replicated state
        np.testing.assert_array_equal(first[key], second[key])
    np.testing.assert_array_equal(first['params'], single['params'])  # lr 0: unchanged
    # Tolerances as argued and measured in test_train (same quantities, 7 steps here).
    assert relative_difference(single['batch_stats'], first['batch_stats']) < BATCH_STATS_RTOL
    head = relative_difference(single['momentum_head'], first['momentum_head'])
    assert head < HEAD_GRADIENT_RTOL
    spatial = relative_difference(single['momentum_spatial'], first['momentum_spatial'])
    assert spatial < SPATIAL_GRADIENT_RTOL
    # Only process 0 writes results and TensorBoard logs; both wrote the checkpoints.
    assert (tmp_path / 'multi' / 'results.json').exists()
    assert os.listdir(tmp_path / 'multi' / 'checkpoints' / 'latest')


@pytest.mark.parametrize('args', [('127.0.0.1:1234', None, 0), ('127.0.0.1:1234', 2, None)])
def test_a_coordinator_needs_the_process_count_and_id(args):
    from former_dfer_jax import distributed

    with pytest.raises(ValueError, match='num_processes'):
        distributed.initialize(*args)
