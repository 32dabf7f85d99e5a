"""The README and docs/*.md say only what is true: every ```python example runs as written,
every relative link resolves, and every command they show exists with the flags they give.

Convention: a ```python block runs unless the line just before its fence is
`<!-- not run: <reason> -->` (it needs DFEW, a GPU, a video, ...). Each block is run on its
own (fresh globals) in a temporary working directory that holds `runs/synthetic`: a copy of
the `tiny_run` fixture's run (7 classes, 4-frame 32 x 32 clips), so an example that opens a
run takes its clip shape from the run (`run.model.spec`), and `clip.mp4`, a 2 s video of a
face. Shell blocks are not run; their
`python -m former_dfer_jax.<module>` commands and `--flags` are checked against the code.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shutil
import tomllib
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
NOT_RUN = re.compile(r'^<!-- not run: (\S.*?) -->$')
FENCE = re.compile(r'^```(\w*)\s*$')


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the first line of code (after the fence)
    language: str
    code: str
    not_run: str | None  # the reason, for a marked python block

    @property
    def where(self) -> str:
        return f'{self.path.relative_to(ROOT)}:{self.line}'


def fenced_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start = i + 1
        end = start
        while end < len(lines) and lines[end].rstrip() != '```':
            end += 1
        assert end < len(lines), f'{path.relative_to(ROOT)}:{i + 1}: unclosed code fence'
        marker = NOT_RUN.match(lines[i - 1].strip()) if i > 0 else None
        blocks.append(
            Block(
                path,
                start + 1,
                match.group(1),
                '\n'.join(lines[start:end]) + '\n',
                marker.group(1) if marker else None,
            )
        )
        i = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOCS for block in fenced_blocks(path)]
PYTHON = [b for b in ALL_BLOCKS if b.language == 'python']
RUN = [b for b in PYTHON if b.not_run is None]
NOT_RUN_BLOCKS = [b for b in PYTHON if b.not_run is not None]


def test_docs_exist_and_every_python_example_is_run_or_marked():
    names = {p.name for p in DOCS}
    assert 'README.md' in names and len(names) > 1, 'README.md and docs/*.md expected'
    # A `not run` marker belongs just before a ```python fence (else it marks nothing).
    for path in DOCS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if 'not run' in line and line.strip().startswith('<!--'):
                where = f'{path.relative_to(ROOT)}:{i + 1}'
                assert NOT_RUN.match(line.strip()), f'{where}: write <!-- not run: <reason> -->'
                following = lines[i + 1] if i + 1 < len(lines) else ''
                assert following.strip() == '```python', f'{where}: marker without a python block'
    # Every python block is either run by test_example or carries a reason.
    assert len(RUN) + len(NOT_RUN_BLOCKS) == len(PYTHON)
    assert len(RUN) >= 5, f'only {len(RUN)} examples run'
    for block in RUN:  # configs are loaded by path; the examples run outside the clone
        assert 'from configs' not in block.code, f'{block.where}: load configs by path'
    print(f'{len(PYTHON)} python examples: {len(RUN)} run, {len(NOT_RUN_BLOCKS)} not run:')
    for block in NOT_RUN_BLOCKS:
        print(f'  {block.where}: {block.not_run}')


@pytest.fixture(scope='module')
def examples_dir(tiny_run, tmp_path_factory):
    """A working directory with runs/synthetic (a finished run) and clip.mp4 (2 s of a
    real face, scikit-image's astronaut, moving) in it."""
    from tests import videos

    _, workdir, _ = tiny_run
    directory = tmp_path_factory.mktemp('examples')
    shutil.copytree(workdir, directory / 'runs' / 'synthetic')
    frames, _ = videos.moving_face_frames(50, size=(320, 180), face_size=64, speed=2)
    videos.write_video(directory / 'clip.mp4', frames, fps=25)
    return directory


@pytest.mark.parametrize('block', RUN, ids=[b.where for b in RUN])
def test_example(block, examples_dir, monkeypatch):
    monkeypatch.chdir(examples_dir)
    # Padded so that a traceback's line numbers are the document's.
    code = compile('\n' * (block.line - 1) + block.code, str(block.path), 'exec')
    try:
        exec(code, {'__name__': '__docs_example__'})
    except Exception:
        pytest.fail(f'{block.where}: the example raised\n{traceback.format_exc()}')


LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces -> '-'."""
    headings = re.findall(r'^#+ (.+)$', path.read_text(), re.M)
    return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in headings}


def test_relative_links_and_their_anchors_resolve():
    broken = []
    for path in DOCS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for target in LINK.findall(line):
                if re.match(r'^[a-z]+:', target):
                    continue
                file, _, anchor = target.partition('#')
                linked = path.parent / file if file else path
                if not linked.exists():
                    broken.append(f'{path.relative_to(ROOT)}:{number}: {target}')
                elif anchor and linked.suffix == '.md' and anchor not in anchors(linked):
                    broken.append(f'{path.relative_to(ROOT)}:{number}: {target} (no such heading)')
    assert not broken, 'broken links:\n' + '\n'.join(broken)


MODULE_COMMAND = re.compile(r'python -m (former_dfer_jax(?:\.\w+)+)')
SCRIPT_COMMAND = re.compile(r'(?<![\w-])(former-dfer-[a-z-]+)')
FLAG = re.compile(r'(?<![\w-])--([a-z_]+)(?==|\s|$|\])')
# Flags every config-reading command shares (cli.py, training/distributed.py), and absl's.
SHARED_FLAGS = {'config', 'workdir', 'verbose', 'helpfull', 'help'}
DISTRIBUTED_FLAGS = {'coordinator_address', 'num_processes', 'process_id', 'multihost'}


def _command_lines(text: str) -> list[str]:
    """Shell commands of a bash block, continuation lines joined, comments dropped."""
    text = text.replace('\\\n', ' ')
    return [line.split(' #')[0] for line in text.splitlines() if not line.startswith('#')]


def _defines_flag(module_file: Path, flag: str) -> bool:
    source = module_file.read_text()
    return re.search(rf"DEFINE_\w+\(\s*'{flag}'", source) is not None


def test_shell_commands_exist_with_their_flags():
    scripts = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['scripts']
    problems = []
    for block in ALL_BLOCKS:
        if block.language not in ('bash', 'sh', 'shell'):
            continue
        for command in _command_lines(block.code):
            for name in SCRIPT_COMMAND.findall(command):
                if name not in scripts:
                    problems.append(f'{block.where}: no command {name}')
            match = MODULE_COMMAND.search(command)
            if not match:
                continue
            module = match.group(1)
            spec = importlib.util.find_spec(module)
            if spec is None or spec.origin is None:
                problems.append(f'{block.where}: no module {module}')
                continue
            rest = command[match.end() :]
            for flag in FLAG.findall(rest):
                if flag in SHARED_FLAGS or flag in DISTRIBUTED_FLAGS:
                    continue
                if not _defines_flag(Path(spec.origin), flag):
                    problems.append(f'{block.where}: {module} has no flag --{flag} ({command!r})')
    assert not problems, '\n'.join(problems)


def test_readme_quick_start_is_the_two_make_commands():
    readme = (ROOT / 'README.md').read_text()
    quick = readme.split('## Quick start', 1)[1].split('\n## ', 1)[0]
    bash = [b for b in fenced_blocks(ROOT / 'README.md') if b.language == 'bash']
    first = next(b for b in bash if b.code.strip().splitlines()[0] in quick)
    commands = [line.split('#')[0].strip() for line in first.code.strip().splitlines()]
    assert commands == ['make demo', 'make test']
    makefile = (ROOT / 'Makefile').read_text()
    assert re.search(r'^demo:', makefile, re.M) and re.search(r'^test:', makefile, re.M)
    assert 'make test' in (ROOT / '.ci' / 'run').read_text()


def test_python_names_in_the_prose_exist():
    """`former_dfer_jax.x.y` names in the docs are modules, or attributes of one."""
    missing = set()
    for path in DOCS:
        for name in set(re.findall(r'`(former_dfer_jax(?:\.\w+)+)', path.read_text())):
            parts = name.split('.')
            for cut in range(len(parts), 0, -1):
                try:
                    found = importlib.import_module('.'.join(parts[:cut]))
                except ImportError:
                    continue
                break
            for attribute in parts[cut:]:
                if not hasattr(found, attribute):
                    missing.add(f'{path.relative_to(ROOT)}: {name}')
                    break
                found = getattr(found, attribute)
    assert not missing, 'not in the code:\n' + '\n'.join(sorted(missing))
