"""Multi-process data parallelism: two processes on 127.0.0.1 (CPU backend, gloo
collectives) train like one process with two local devices."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.tiny import env_with_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKER = """
import sys
import jax
import numpy as np
from flax import nnx
from former_dfer_jax import distributed, train
from tests.tiny import tiny_config

workdir, out, address, num_processes, process_id = sys.argv[1:6]
if int(num_processes) > 1:
    distributed.initialize(address, int(num_processes), int(process_id))
assert jax.device_count() == 2, jax.devices()
config = tiny_config()
config.optimizer.learning_rate = 0.001  # see test_train: keeps float noise from growing
config.num_epochs = 1
state = train.train_and_evaluate(config, workdir)
leaves = jax.tree.leaves(nnx.merge_state(state.params, state.rest))
np.savez(out, *[np.asarray(jax.device_get(x)) for x in leaves])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _params(path) -> list[np.ndarray]:
    return list(np.load(path).values())


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

    first, second = _params(tmp_path / 'process_0.npz'), _params(tmp_path / 'process_1.npz')
    single = _params(tmp_path / 'single.npz')
    for a, b, c in zip(first, second, single, strict=True):
        np.testing.assert_array_equal(a, b)  # every process holds the same replicated state
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)
    # Only process 0 writes results and TensorBoard logs; both wrote the checkpoints.
    assert (tmp_path / 'multi' / 'results.json').exists()
    assert os.listdir(tmp_path / 'multi' / 'checkpoints' / 'latest')


@pytest.mark.parametrize('args', [('127.0.0.1:1234', None, 0), ('127.0.0.1:1234', 2, None)])
def test_a_coordinator_needs_the_process_count_and_id(args):
    from former_dfer_jax import distributed

    with pytest.raises(ValueError, match='num_processes'):
        distributed.initialize(*args)
