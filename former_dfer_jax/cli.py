"""What every command-line entry point shares: its flags, how it runs, and its set-up.

    def _define_flags() -> None:
        cli.define_config_flags(workdir_help='Directory for checkpoints, logs and results.')

    def entry_point() -> None:  # a [project.scripts] command of pyproject.toml
        _define_flags()
        cli.run(main)

    if __name__ == '__main__':
        entry_point()

`run` prints an `errors.UserError` raised in main as one `error: <message>` line on stderr
and exits with status 1 (`--verbose` adds the traceback); any other exception is a bug:
one `error:` line too, naming the crash log (crash.log in the output folder) that holds its
traceback. Flags are defined only when a module runs as a command, so that the
entry points import side by side.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import logging as std_logging
import os
import re
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable, Iterator
from typing import NoReturn

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from former_dfer_jax import default_config, files, xla_flags
from former_dfer_jax.errors import UserError
from former_dfer_jax.training import distributed

Main = Callable[[list[str]], None]


# TensorFlow's C++ start-up notices, printed before any log level applies.
_START_UP_NOTICES = (
    'All log messages before absl::InitializeLog() is called',
    'oneDNN custom operations are on',
    'This TensorFlow binary is optimized to use available CPU instructions',
    'To enable the following instructions:',
)


@contextlib.contextmanager
def _start_up_notices_dropped() -> Iterator[None]:
    """Captures what C++ code writes to file descriptor 2 in the block, then passes it on
    without TensorFlow's start-up notices."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        try:
            os.dup2(captured.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            sys.stderr.write(_without_start_up_notices(captured.read().decode(errors='replace')))


def _without_start_up_notices(text: str) -> str:
    lines = text.splitlines(keepends=True)
    return ''.join(line for line in lines if not any(n in line for n in _START_UP_NOTICES))


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs the process's first `import tensorflow` (the data pipeline and MTCNN run on
    it) with its start-up notices dropped ("oneDNN custom operations are on ...", twice,
    before any log level applies); any other line it prints is passed on. Installed by
    the commands only (importing this module), so a command that never needs TensorFlow
    never loads it; --verbose shows everything."""

    def find_spec(self, name, path=None, target=None):
        if name != 'tensorflow':
            return None
        sys.meta_path.remove(self)
        with _start_up_notices_dropped():
            self._module = importlib.import_module(name)  # raises as a plain import would
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        return self._module

    def exec_module(self, module) -> None:
        pass  # imported by find_spec


if not any(arg == '--verbose' or arg.startswith('--verbose=') for arg in sys.argv):
    sys.meta_path.insert(0, _QuietTensorFlowImport())


def define_config_flags(
    *, workdir_help: str | None = None, reference_default: bool = False
) -> None:
    """`--config` (an ml_collections config file, loaded locked so that a misspelt
    `--config.x.y` override is an error): required, or with `reference_default` the
    package's reference recipe (`default_config`) when not given; and, when `workdir_help`
    is given, the required `--workdir`."""
    default = default_config.__file__ if reference_default else None
    config_flags.DEFINE_config_file(
        'config',
        default,
        'Config file, e.g. configs/dfew.py; override keys with --config.<key>=<value>.'
        + (' Default: the reference recipe.' if reference_default else ''),
        lock_config=True,
    )
    required = [] if reference_default else ['config']
    if workdir_help is not None:
        flags.DEFINE_string('workdir', None, workdir_help)
        required.append('workdir')
    flags.mark_flags_as_required(required)


def _fail(message: str) -> NoReturn:
    print(f'error: {message}', file=sys.stderr, flush=True)
    raise SystemExit(1)


def _user_error_in(error: BaseException | None) -> UserError | None:
    """The innermost UserError that `error` was raised while handling, if any: absl and
    ml_collections re-raise what a config file raises inside their own errors."""
    found = None
    while error is not None:
        if isinstance(error, UserError):
            found = error
        error = error.__cause__ or error.__context__
    return found


def _misspelt_override(error: LookupError | AttributeError, argv: list[str]) -> str:
    """The one-line message for ml_collections' error on an override of a missing key."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]  # AttributeError(KeyError(message))
    text = str(error.args[0]) if error.args else str(error)
    key = re.match(r"'([^']+)'", text)
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    name = key.group(1) if key else '?'
    flag = next(
        (a.split('=', 1)[0] for a in argv if re.match(rf'--config\..*\b{re.escape(name)}\b', a)),
        '--config',
    )
    hint = f' (did you mean "{suggestion.group(1)}"?)' if suggestion else ''
    return f'{flag}: the config has no key {name!r}{hint}'


def _config_file_arg(argv: list[str]) -> str:
    return next((a for a in reversed(argv) if a.startswith('--config=')), '--config')


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with the user's mistakes in --config (a missing or failing
    config file, an override of a key the config does not have) as one error line."""
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as e:
        user_error = _user_error_in(e)
        if user_error is not None:
            _fail(str(user_error))
        # As absl's own parser reports it (a second parse would define the overrides twice).
        message = textwrap.indent(str(e), '  ').strip() if '\n' in str(e) else str(e)
        sys.stderr.write(f'FATAL Flags parsing error: {message}\n')
        sys.stderr.write('Pass --helpshort or --helpfull to see help on flags.\n')
        raise SystemExit(1) from None
    except (KeyError, AttributeError) as e:  # what ml_collections raises for such overrides
        _fail(_misspelt_override(e, argv))
    except ImportError as e:  # raised by the config file
        _fail(f'{_config_file_arg(argv)}: {e}')
    config = flags.FLAGS['config'].value if 'config' in flags.FLAGS else None
    if config is not None and not isinstance(config, ml_collections.ConfigDict):
        try:  # a file that failed to load: its error comes on first access
            config.keys()
        except OSError as e:
            arg = _config_file_arg(argv)
            path = arg.partition('=')[2].split(':', 1)[0]
            cause = ' '.join(str(e.__cause__ or e).split())
            _fail(f'{arg}: no such file' if not os.path.isfile(path) else f'{arg}: {cause}')
    return remaining


CRASH_LOG = 'crash.log'


def _output_dir() -> str | None:
    """Where the command writes (its --workdir or --output), if it has one and it is set."""
    for name in ('workdir', 'output'):
        if name in flags.FLAGS and flags.FLAGS[name].present and flags.FLAGS[name].value:
            return str(flags.FLAGS[name].value)
    return None


def _write_crash_log(error: BaseException) -> str:
    """Appends `error`'s traceback (with the command line and time) to crash.log in the
    command's output folder, else in the temporary folder; returns the log's path."""
    text = ''.join(traceback.format_exception(error))
    entry = f'--- {time.strftime("%Y-%m-%d %H:%M:%S")} {" ".join(sys.argv)}\n{text}\n'
    for directory in (_output_dir(), tempfile.gettempdir()):
        if directory is None:
            continue
        path = os.path.join(os.path.abspath(directory), CRASH_LOG)
        try:
            os.makedirs(directory, exist_ok=True)
            with open(path, 'a') as f:
                f.write(entry)
            return path
        except OSError:
            continue
    return '(no crash log: nothing could be written)'


def _innermost_line(error: BaseException) -> str:
    while error.__cause__ or error.__context__:
        error = error.__cause__ or error.__context__
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0] if lines else ""}'.rstrip(': ')


def _report_user_errors(main: Main) -> Main:
    """`main`, with what it raises printed as one `error:` line on stderr and exit status
    1 (the traceback too with --verbose): a UserError as it is; a full disk that no writer
    foresaw with the free space; any other exception as a bug, its traceback in a crash
    log."""

    @functools.wraps(main)
    def wrapped(argv: list[str]) -> None:
        try:
            main(argv)
        except UserError as e:
            if flags.FLAGS.verbose:
                traceback.print_exc()
            _fail(str(e))
        except app.UsageError:
            raise  # absl prints the usage
        except Exception as e:
            if flags.FLAGS.verbose:
                traceback.print_exc()
            if files.is_no_space(e):
                where = _output_dir() or os.getcwd()
                _fail(
                    f'no space left on device ({_innermost_line(e)}); '
                    f'{files.free_space(where)} free on {os.path.abspath(where)}; '
                    'free space and run the same command again'
                )
            log = _write_crash_log(e)
            _fail(f'{_innermost_line(e)} (a bug: please report it with {log})')

    return wrapped


def run(main: Main, argv: list[str] | None = None) -> None:
    """absl's `app.run(main)` (argv: sys.argv), with --verbose and one-line user errors."""
    if 'verbose' not in flags.FLAGS:
        flags.DEFINE_bool('verbose', False, 'On an error, also print its traceback.')
    app.run(_report_user_errors(main), argv=argv, flags_parser=_parse_flags)


# Libraries whose INFO records drown the training log (Orbax logs every save in detail).
_QUIET_PATHS = ('/orbax/', '/tensorstore/', '/jax/_src/')


class _LibraryInfoFilter(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        quiet = any(part in record.pathname for part in _QUIET_PATHS)
        return record.levelno >= std_logging.WARNING or not quiet


def setup() -> None:
    """The project's XLA flags (see `xla_flags`; XLA reads them when JAX starts its
    backend, which nothing has done yet), INFO logging for this project (library chatter
    below WARNING hidden), then `jax.distributed` when the flags or the environment ask
    for several processes."""
    xla_flags.set_xla_flags()
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_LibraryInfoFilter())
    if not ('verbose' in flags.FLAGS and flags.FLAGS.verbose):
        # e.g. tf.function's retracing warnings while MTCNN meets new frame sizes.
        std_logging.getLogger('tensorflow').setLevel(std_logging.ERROR)
    distributed.initialize_from_flags()
