"""The command-line runner: a user's mistake is one `error:` line and exit status 1, so is a
bug (its traceback in a crash log) and a full disk nobody foresaw; --verbose shows the
tracebacks too."""

import errno
import os
import subprocess
import sys
import tempfile

import pytest
from absl import flags
from absl.testing import flagsaver

from former_dfer_jax import cli
from former_dfer_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run(capsys, monkeypatch):
    """Runs `cli.run(main)` in this process on a command line: (exit status, stderr)."""
    was_parsed = flags.FLAGS.is_parsed()

    def run_main(main, *args: str) -> tuple[int, str]:
        argv = ['prog', *args]
        monkeypatch.setattr(sys, 'argv', argv)  # config_flags reads its overrides there
        with pytest.raises(SystemExit) as exit_info:
            cli.run(main, argv=argv)
        return exit_info.value.code, capsys.readouterr().err

    yield run_main
    flags.FLAGS['verbose'].value = False
    if not was_parsed:
        flags.FLAGS.unparse_flags()


@pytest.fixture
def config_flag():
    """--config defined as the entry points define it, removed again afterwards."""
    cli.define_config_flags()
    yield
    for name in [n for n in flags.FLAGS if n == 'config' or n.startswith('config.')]:
        delattr(flags.FLAGS, name)


def _mistake(argv):
    raise UserError('data.root is not set\n  point it at the dataset')


def _never(argv):
    pytest.fail('main ran although the command line was wrong')


def test_a_user_error_is_one_error_line_and_exit_status_1(run):
    status, err = run(_mistake)
    assert status == 1
    assert err.endswith('error: data.root is not set\n  point it at the dataset\n')
    assert 'Traceback' not in err


def test_verbose_shows_the_traceback_of_a_user_error_too(run):
    status, err = run(_mistake, '--verbose')
    assert status == 1
    assert 'Traceback' in err and 'in _mistake' in err
    assert err.endswith('error: data.root is not set\n  point it at the dataset\n')


def _bug(argv):
    raise KeyError('oops')


def test_any_other_exception_is_a_bug_one_line_naming_its_crash_log(run, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))  # a command without an output
    status, err = run(_bug)
    log = tmp_path / cli.CRASH_LOG
    assert status == 1
    assert err == f"error: KeyError: 'oops' (a bug: please report it with {log})\n"
    text = log.read_text()
    assert 'Traceback' in text and 'in _bug' in text and "KeyError: 'oops'" in text


def test_a_bugs_crash_log_goes_into_the_commands_output_folder(run, tmp_path):
    flags.DEFINE_string('output', None, 'where the command writes')
    try:
        status, err = run(_bug, f'--output={tmp_path}/out')
    finally:
        delattr(flags.FLAGS, 'output')
    assert status == 1
    assert err.endswith(f'(a bug: please report it with {tmp_path}/out/{cli.CRASH_LOG})\n')
    assert 'in _bug' in (tmp_path / 'out' / cli.CRASH_LOG).read_text()


def test_verbose_shows_a_bugs_traceback_on_the_terminal_too(run, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    status, err = run(_bug, '--verbose')
    assert status == 1
    assert 'Traceback' in err and 'in _bug' in err
    assert err.splitlines()[-1].startswith("error: KeyError: 'oops' (a bug: please report")


def test_a_full_disk_no_writer_foresaw_is_one_line_with_the_free_space(run):
    def full(argv):
        try:
            raise OSError(errno.ENOSPC, 'No space left on device')
        except OSError:
            raise RuntimeError('Event loop is closed')  # noqa: B904 (as libraries do)

    status, err = run(full)
    assert status == 1
    (line,) = err.splitlines()
    assert line.startswith(
        'error: no space left on device (OSError: [Errno 28] No space left on device); '
    )
    assert line.endswith(f' free on {os.getcwd()}; free space and run the same command again')


def test_a_misspelt_config_override_is_one_error_line_with_the_suggestion(run, config_flag):
    config = f'--config={REPO}/configs/dfew.py'
    status, err = run(_never, config, '--config.optimizer.learnig_rate=0.1')
    assert status == 1
    assert err == (
        'error: --config.optimizer.learnig_rate: the config has no key '
        '\'learnig_rate\' (did you mean "learning_rate"?)\n'
    )


def test_a_missing_config_file_is_one_error_line(run, config_flag, tmp_path):
    status, err = run(_never, f'--config={tmp_path}/dfw.py')
    assert (status, err) == (1, f'error: --config={tmp_path}/dfw.py: no such file\n')


def test_a_user_error_raised_by_the_config_file_is_one_error_line(run, config_flag):
    status, err = run(_never, f'--config={REPO}/configs/ablations.py:resnet50_gru')
    assert status == 1
    assert err.startswith("error: unknown ablation variant 'resnet50_gru'; valid: resnet18_gru")
    assert len(err.splitlines()) == 1


def _main(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    """`python -m former_dfer_jax.main` with an empty data cache."""
    command = [sys.executable, '-m', 'former_dfer_jax.main', f'--workdir={tmp_path}/run']
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'FORMER_DFER_CACHE': str(tmp_path / 'cache')}
    return subprocess.run(
        command + list(overrides), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith('error: ')]


def test_training_without_a_dataset_root_is_one_error_line(tmp_path):
    result = _main(tmp_path, '--config=configs/dfew.py')
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    (line,) = _error_lines(result.stderr)
    assert 'data.root' in line


def test_a_bad_fold_is_refused_before_any_data_is_prepared(tmp_path):
    result = _main(tmp_path, '--config=configs/synthetic.py', '--config.data.fold=9')
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    # The command's own line only: TensorFlow's start-up notices ("oneDNN custom operations
    # are on ...") are not shown without --verbose.
    assert result.stderr.splitlines() == ['error: data.fold=9: synthetic has folds 1, 2, 3, 4, 5']
    assert not (tmp_path / 'cache' / 'tfds').exists()
    assert not (tmp_path / 'cache').exists() or not any((tmp_path / 'cache').iterdir())


def test_verbose_shows_the_libraries_start_up_notices_too(tmp_path):
    result = _main(tmp_path, '--config=configs/synthetic.py', '--config.data.fold=9', '--verbose')
    assert result.returncode == 1
    assert 'oneDNN' in result.stderr  # TensorFlow's, printed when it loads on this CPU build
    assert result.stderr.splitlines()[-1].startswith('error: data.fold=9')


def run_entry_point(entry_point, *args: str) -> int:
    """Runs a command-line tool (`python -m former_dfer_jax.<tool> ARGS`) in this process,
    as `cli.run` runs it, and returns its exit status. The tool's flags are defined for
    the call; afterwards every flag is as it was (values, definitions, parsed or not)."""
    saved, was_parsed, argv_before = flagsaver.save_flag_values(), flags.FLAGS.is_parsed(), sys.argv
    argv = [entry_point.__name__, *args]
    sys.argv = argv  # config_flags reads its overrides there
    try:
        entry_point._define_flags()
        with pytest.raises(SystemExit) as exit_info:
            cli.run(entry_point.main, argv=argv)
    finally:
        sys.argv = argv_before
        flagsaver.restore_flag_values(saved)  # also deletes the flags defined for the call
        if not was_parsed:
            flags.FLAGS.unparse_flags()
    code = exit_info.value.code
    return 0 if code is None else code  # sys.exit(None) is success


def test_an_entry_point_runs_in_process_and_leaves_the_flags_as_they_were(capsys, tmp_path):
    from former_dfer_jax import evaluate

    before = set(flags.FLAGS)
    config = f'--config={REPO}/configs/synthetic.py'
    status = run_entry_point(evaluate, config, '--config.data.fold=9', f'--workdir={tmp_path}')
    assert status == 1
    assert capsys.readouterr().err.endswith(
        'error: data.fold=9: synthetic has folds 1, 2, 3, 4, 5\n'
    )
    assert set(flags.FLAGS) == before


def test_library_chatter_is_hidden_and_real_warnings_kept():
    import logging

    keep = cli._LibraryInfoFilter().filter

    def record(level, path, message):
        return logging.LogRecord('absl', level, path, 1, message, None, None)

    assert not keep(record(logging.INFO, '/site-packages/orbax/checkpoint/x.py', 'saved'))
    assert keep(record(logging.INFO, '/former_dfer_jax/train.py', 'epoch 1'))
    assert keep(record(logging.WARNING, '/site-packages/orbax/checkpoint/x.py', 'disk full'))


def test_only_tensorflows_start_up_notices_are_dropped_from_what_its_import_prints():
    printed = (
        'WARNING: All log messages before absl::InitializeLog() is called are written to '
        'STDERR\n'
        'I0000 00:00:1 port.cc:153] oneDNN custom operations are on. You may see ...\n'
        'E0000 00:00:1 cuda_dnn.cc:8] Unable to register cuDNN factory\n'
    )
    assert cli._without_start_up_notices(printed) == (
        'E0000 00:00:1 cuda_dnn.cc:8] Unable to register cuDNN factory\n'
    )


def test_a_command_that_never_needs_tensorflow_never_loads_it():
    code = 'import sys; import former_dfer_jax.cli; print("tensorflow" in sys.modules)'
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.stdout.strip() == 'False', result.stderr[-2000:]
