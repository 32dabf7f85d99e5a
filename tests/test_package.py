"""The package as a user installs it: a wheel of `former_dfer_jax` only, and a library that
works from any directory, with config files given by path."""

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

from tests.tiny import OWN_CLASS_NAMES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = (
    'former-dfer-train',
    'former-dfer-evaluate',
    'former-dfer-cross-validate',
    'former-dfer-predict',
    'former-dfer-explain',
    'former-dfer-convert-torch',
    'former-dfer-benchmark',
    'former-dfer-flops',
    'former-dfer-prepare',
    'former-dfer-extract-faces',
    'former-dfer-synthetic',
)


def _run_outside_the_checkout(command: list[str], cwd) -> subprocess.CompletedProcess:
    """`command` in `cwd`, with nothing in its environment that would put the checkout on
    sys.path; fails the test, with its stderr, unless it succeeds."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_wheel_holds_the_package_only_with_its_commands(tmp_path):
    # Built from a copy, so the build's own folders never land in the checkout.
    source = tmp_path / 'source'
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
    shutil.copytree(
        os.path.join(REPO, 'former_dfer_jax'), source / 'former_dfer_jax', ignore=ignore
    )
    for name in ('pyproject.toml', 'README.md'):
        shutil.copy(os.path.join(REPO, name), source / name)
    pip = [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q']
    result = subprocess.run(
        [*pip, '-w', str(tmp_path / 'dist'), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / 'dist').glob('former_dfer_jax-*.whl')
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split('/')[0] for name in names}
    assert top == {'former_dfer_jax', f'{wheel.name.split("-py3")[0]}.dist-info'}, top
    packages = {os.path.dirname(n) for n in names if n.endswith('__init__.py')}
    for layer in ('models', 'video', 'data', 'training', 'inference'):
        assert f'former_dfer_jax/{layer}' in packages
    assert 'former_dfer_jax/default_config.py' in names
    assert 'former_dfer_jax/training/reference_logs.csv' in names  # the authors' curves
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith('entry_points.txt'))
    )
    for command in COMMANDS:
        assert f'{command} = '.encode() in entry_points, command


def test_the_library_works_from_another_directory(tmp_path, own_run):
    _, run_dir = own_run
    code = textwrap.dedent(
        f"""
        import importlib.util, json
        from flax import nnx
        from former_dfer_jax.models import FormerDFER, ModelSpec
        from former_dfer_jax.inference import open_run

        model = FormerDFER(ModelSpec(num_classes=11, image_size=32, num_frames=4), rngs=nnx.Rngs(0))
        run = open_run({run_dir!r})
        print(json.dumps({{
            'checkout_on_path': importlib.util.find_spec('configs') is not None,
            'classes': model.spec.num_classes,
            'run_classes': list(run.class_names),
        }}))
        """
    )
    result = _run_outside_the_checkout([sys.executable, '-c', code], tmp_path)
    import json

    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {
        'checkout_on_path': False,
        'classes': 11,
        'run_classes': list(OWN_CLASS_NAMES),
    }


def test_training_runs_from_another_directory_with_a_config_file_given_by_path(tmp_path):
    from tests.tiny import tiny_config

    tiny = tiny_config()
    overrides = {  # tiny_config's settings, as command-line overrides
        'data.synthetic.num_clips': tiny.data.synthetic.num_clips,
        'data.synthetic.min_frames': tiny.data.synthetic.min_frames,
        'data.synthetic.max_frames': tiny.data.synthetic.max_frames,
        'data.num_segments': tiny.data.num_segments,
        'model.spatial.depth': 1,
        'model.temporal.depth': 1,
        'batch_size': tiny.batch_size,
        'eval_batch_size': tiny.eval_batch_size,
        'num_epochs': 1,
    }
    command = [
        sys.executable,
        '-m',
        'former_dfer_jax.main',
        f'--config={REPO}/configs/synthetic.py',
        '--workdir=run',
        *(f'--config.{key}={value}' for key, value in overrides.items()),
    ]
    result = _run_outside_the_checkout(command, tmp_path)
    assert 'Run finished.' in result.stdout
    assert (tmp_path / 'run' / 'results.json').exists()
