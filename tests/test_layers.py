"""The package's layers, as a reader is promised them (former_dfer_jax/__init__.py): no
import cycles, each layer imports only from itself and below, and library code never
imports a command line."""

import ast
import os

import pytest

PACKAGE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'former_dfer_jax'
)
LEAVES = ('errors', 'files', 'run_lock', 'xla_flags', 'default_config')
# Rank of each layer: a module may import modules of its own rank or lower (models and
# video are side by side: neither imports the other).
RANKS = {'leaf': 0, 'models': 1, 'video': 1, 'data': 2, 'training': 3, 'inference': 4, 'top': 5}


def _modules() -> dict[str, str]:
    found = {}
    for directory, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith('.py'):
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, PACKAGE)[:-3].split(os.sep)
                if parts[-1] == '__init__':
                    parts = parts[:-1]
                found['.'.join(['former_dfer_jax', *parts])] = path
    return found


MODULES = _modules()


def _parse(module: str) -> ast.Module:
    with open(MODULES[module]) as f:
        return ast.parse(f.read())


def _imports(module: str) -> set[str]:
    """The package modules `module` imports, at any depth of its code (lazy imports too)."""
    tree = _parse(module)
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f'{node.module}.{alias.name}' for alias in node.names] + [node.module]
            names = [n for n in names if n in MODULES][:1] or [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        out.update(n for n in names if n in MODULES and n != module)
    return out


GRAPH = {module: _imports(module) for module in MODULES}


def _is_command(module: str) -> bool:
    """A command line: a module with an `entry_point` (a [project.scripts] command)."""
    tree = _parse(module)
    return any(isinstance(n, ast.FunctionDef) and n.name == 'entry_point' for n in tree.body)


def _layer(module: str) -> str:
    parts = module.split('.')
    if len(parts) == 1:
        return 'top'
    if parts[1] in RANKS:
        return parts[1]
    return 'leaf' if parts[1] in LEAVES else 'top'


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(GRAPH[module]):
            if other.startswith(module + '.'):
                continue  # a package importing its own modules
            if state.get(other) == 1 and not module.startswith(other + '.'):
                cycle = [*path[path.index(other) :], other]
                pytest.fail('import cycle: ' + ' -> '.join(cycle))
            if other not in state:
                visit(other, [*path, other])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_each_layer_imports_only_from_its_own_layer_or_below():
    problems = []
    for module, imported in GRAPH.items():
        if _is_command(module) or module == 'former_dfer_jax.cli':
            continue  # commands sit above every layer, wherever their file is
        for other in imported:
            if other == 'former_dfer_jax':
                continue
            mine, theirs = _layer(module), _layer(other)
            crossing = {mine, theirs} == {'models', 'video'}
            if RANKS[theirs] > RANKS[mine] or crossing:
                problems.append(f'{module} ({mine}) imports {other} ({theirs})')
    assert not problems, '\n'.join(sorted(problems))


def test_library_code_never_imports_a_command_line():
    commands = {m for m in MODULES if _is_command(m)} | {'former_dfer_jax.cli'}
    problems = [
        f'{module} imports {other}'
        for module, imported in GRAPH.items()
        if module not in commands
        for other in imported & commands
    ]
    assert not problems, '\n'.join(sorted(problems))


def test_every_command_of_the_package_is_a_command_module():
    import tomllib

    with open(os.path.join(os.path.dirname(PACKAGE), 'pyproject.toml'), 'rb') as f:
        scripts = tomllib.load(f)['project']['scripts']
    for command, target in scripts.items():
        module, _, function = target.partition(':')
        assert module in MODULES and function == 'entry_point', command
        assert _is_command(module), f'{command}: {module} has no entry_point'


def test_the_package_never_imports_the_repositorys_configs():
    # Config files are loaded by path; their defaults are the package's default_config.
    importers = []
    for module in MODULES:
        for node in ast.walk(_parse(module)):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            if any(n == 'configs' or n.startswith('configs.') for n in names):
                importers.append(module)
    assert not importers
