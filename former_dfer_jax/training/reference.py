"""The authors' own training curves, and how a run compares with them.

The authors of Former-DFER published the logs of their runs (github.com/zengqunzhao/
Former-DFER, log/DFEW-set{1..5}-log.txt, log/AFEW-log.txt); their per-epoch figures ship
as `reference_logs.csv` beside this module (`curves()`). Their epochs are 0-based; here
epoch e is ours, 1-based: the authors' log epoch e - 1. Rates are fractions, as ours.

Matching (`match(config)`): DFEW fold k <-> DFEW-set{k}; AFEW <-> AFEW; the synthetic
stand-in (DFEW's layout and 5 folds) <-> DFEW-set{k}, labelled as not DFEW; other
datasets (FERV39k, MAFW, own) have no published curve and are not compared.

The early warning (`Comparison.warning`): a test WAR below the authors' spread at the
same epoch (the lowest of the group's runs: DFEW's 5 folds, or the AFEW run) by more
than MARGIN_SIGMAS times the epoch-to-epoch noise of those runs: the standard deviation
of the WAR change between consecutive epochs, pooled over the runs within each learning-
rate phase. DFEW: 4.60 points at lr 0.01 (epochs 1-40), 0.74 at 0.001, 0.36 at 0.0001;
AFEW 1.92. So after epoch 10 (the folds at 37.20-41.92%) the floor is 37.20 - 2 x 4.60 =
28.0%: a run still near chance (~21%, the authors' first epoch) is named; a run within
the folds' own wobble is not, and none of the authors' runs would ever trigger it.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.resources
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

SOURCE = (
    "the authors' logs, github.com/zengqunzhao/Former-DFER log/DFEW-set{1..5}-log.txt and "
    'log/AFEW-log.txt'
)
MARGIN_SIGMAS = 2.0
# Test clips per run: the one count that makes every logged WAR a whole number of clips
# (tests/test_reference.py checks it); fold 1 tested 2,338 clips, not DFEW's 2,341.
TEST_CLIPS = {
    'DFEW-set1': 2338,
    'DFEW-set2': 2341,
    'DFEW-set3': 2340,
    'DFEW-set4': 2339,
    'DFEW-set5': 2336,
    'AFEW': 381,
}
# The authors' recipes (their scripts and logs: FORMER_DFER.md), in `_settings`' terms.
RECIPES = {
    'DFEW': {
        'epochs': 100,
        'optimizer': 'sgd',
        'learning rate': 0.01,
        'schedule': 'x0.1 every 40 epochs',
        'batch size': 32,
        'frames': 16,
        'image size': 112,
        'init': 'scratch',
    },
    'AFEW': {
        'epochs': 20,
        'optimizer': 'sgd',
        'learning rate': 0.001,
        'schedule': 'constant',
        'batch size': 32,
        'frames': 16,
        'image size': 112,
        'init': 'a DFEW model',
    },
}
LIKELY_CAUSES = (
    'face crops (aligned faces, not whole frames: data.face_crop), frame order (frames '
    'sorted numerically in time), normalisation (pixels / 255 only, no mean / std), and '
    'the recipe'
)


@dataclasses.dataclass(frozen=True)
class Curve:
    """One run of the authors: per epoch (index e - 1 = our epoch e) its learning rate,
    train loss / accuracy and test loss as last logged, test WAR, seconds."""

    name: str  # 'DFEW-set1' .. 'DFEW-set5', 'AFEW'
    learning_rate: np.ndarray
    train_loss: np.ndarray
    train_accuracy: np.ndarray
    test_loss: np.ndarray
    test_war: np.ndarray
    epoch_seconds: np.ndarray

    @property
    def group(self) -> str:
        return self.name.split('-')[0]

    @property
    def num_epochs(self) -> int:
        return len(self.test_war)

    @property
    def best_epoch(self) -> int:
        """The epoch of the best test WAR (the first of equals), as the authors kept it."""
        return int(np.argmax(self.test_war)) + 1

    def war(self, epoch: int) -> float | None:
        """Test WAR after `epoch` (1-based), None past the authors' last epoch."""
        return float(self.test_war[epoch - 1]) if 1 <= epoch <= self.num_epochs else None

    def scalars(self, epoch: int) -> dict[str, float]:
        """The epoch's figures under the tags the trainer writes."""
        i = epoch - 1
        return {
            'train/loss': float(self.train_loss[i]),
            'train/accuracy': float(self.train_accuracy[i]),
            'train/learning_rate': float(self.learning_rate[i]),
            'test/loss': float(self.test_loss[i]),
            'test/war': float(self.test_war[i]),
        }


@functools.cache
def curves() -> dict[str, Curve]:
    """The six packaged curves by name, in the file's order."""
    text = importlib.resources.files(__package__).joinpath('reference_logs.csv').read_text()
    lines = [line for line in text.splitlines() if not line.startswith('#')]
    rows = list(csv.DictReader(lines))
    out = {}
    for name in dict.fromkeys(row['run'] for row in rows):
        own = sorted((r for r in rows if r['run'] == name), key=lambda r: int(r['epoch']))
        assert [int(r['epoch']) for r in own] == list(range(len(own))), name

        def column(key: str, scale: float = 1.0, rows=own) -> np.ndarray:
            # 6 digits: the logs print 1e-4 as 0.00010000000000000002 in some folds
            values = np.array([float(f'{float(r[key]):.6g}') for r in rows]) * scale
            values.flags.writeable = False
            return values

        out[name] = Curve(
            name=name,
            learning_rate=column('learning_rate'),
            train_loss=column('train_loss_last_logged'),
            train_accuracy=column('train_accuracy_last_logged', 0.01),
            test_loss=column('test_loss'),
            test_war=column('test_war', 0.01),
            epoch_seconds=column('epoch_seconds'),
        )
    return out


def group(name: str) -> list[Curve]:
    """The runs of a group ('DFEW': the 5 folds, 'AFEW': one)."""
    return [c for c in curves().values() if c.group == name]


@functools.cache
def noise(group_name: str) -> dict[float, float]:
    """Learning rate -> std of the test WAR change between consecutive epochs at that
    rate (a change across a rate drop excluded), pooled over the group's runs."""
    changes: dict[float, list[float]] = {}
    for c in group(group_name):
        steady = c.learning_rate[1:] == c.learning_rate[:-1]
        change = np.diff(c.test_war)
        for lr in np.unique(c.learning_rate):
            changes.setdefault(float(lr), []).extend(change[steady & (c.learning_rate[1:] == lr)])
    return {lr: float(np.std(values)) for lr, values in changes.items()}


def spread(group_name: str, epoch: int) -> tuple[float, float] | None:
    """(lowest, highest) test WAR of the group's runs after `epoch`; None past their end."""
    wars = [c.war(epoch) for c in group(group_name)]
    return None if None in wars else (min(wars), max(wars))


def floor(group_name: str, epoch: int) -> float | None:
    """The warning floor after `epoch`: the spread's low end minus MARGIN_SIGMAS times
    the noise at the authors' learning rate of that epoch."""
    low_high = spread(group_name, epoch)
    if low_high is None:
        return None
    lr = float(group(group_name)[0].learning_rate[epoch - 1])
    return low_high[0] - MARGIN_SIGMAS * noise(group_name)[lr]


def _schedule(config: ml_collections.ConfigDict) -> str:
    opt = config.optimizer
    if opt.lr_decay_every_epochs >= config.num_epochs or opt.lr_decay_factor == 1:
        return 'constant'
    return f'x{opt.lr_decay_factor:g} every {opt.lr_decay_every_epochs} epochs'


def _settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The recipe of `config` in the terms of RECIPES."""
    return {
        'epochs': config.num_epochs,
        'optimizer': config.optimizer.name,
        'learning rate': config.optimizer.learning_rate,
        'schedule': _schedule(config),
        'batch size': config.batch_size,
        'frames': config.data.num_segments * config.data.segment_length,
        'image size': config.data.image_size,
        'init': 'a DFEW model' if config.init_from else 'scratch',
    }


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A run's reference: the authors' curve, the settings that differ from their recipe
    ('learning rate 0.0003 (theirs 0.01)'), and a note where the data are not theirs."""

    run: str
    differences: tuple[str, ...] = ()
    note: str = ''

    @property
    def curve(self) -> Curve:
        return curves()[self.run]

    def describe(self) -> str:
        """One line: which curve, and what differs."""
        return _describe([self.run], self.differences, self.note)

    def warning(self, epoch: int, war: float) -> str | None:
        """The early warning when `war` after `epoch` is below the floor, else None."""
        level = floor(self.curve.group, epoch)
        if level is None or war >= level:
            return None
        low, high = spread(self.curve.group, epoch)
        runs = group(self.curve.group)
        where = (
            f'{100 * low:.2f}-{100 * high:.2f}% over their {len(runs)} {self.curve.group} folds'
            if len(runs) > 1
            else f'{100 * low:.2f}% in their {self.curve.name} run'
        )
        recipe = 'differs: ' + ', '.join(self.differences) if self.differences else 'theirs'
        note = f' {self.note}' if self.note else ''
        return (
            f"test WAR {100 * war:.2f}% after epoch {epoch} is below the authors' curves "
            f'({where} at that epoch) by more than their epoch-to-epoch noise allows (floor '
            f'{100 * level:.2f}%). Check {LIKELY_CAUSES} ({recipe}).{note} The run goes on.'
        )

    def to_dict(self) -> dict[str, Any]:
        return {'run': self.run, 'differences': list(self.differences), 'note': self.note}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> Comparison | None:
        if not values:
            return None
        return cls(values['run'], tuple(values['differences']), values['note'])


def _describe(runs: Sequence[str], differences: Sequence[str], note: str) -> str:
    recipe = 'recipe differs: ' + ', '.join(differences) if differences else "the authors' recipe"
    logs = f'{runs[0]} log' if len(runs) == 1 else f'{", ".join(runs)} logs'
    return f"Compared with the authors' {logs} ({recipe}).{' ' + note if note else ''}"


def match(config: ml_collections.ConfigDict) -> Comparison | None:
    """The comparison for a run of `config`, None where the authors published no curve."""
    name, fold = config.data.name, config.data.fold
    note = ''
    if name in ('dfew', 'synthetic') and 1 <= fold <= 5:
        run = f'DFEW-set{fold}'
        if name == 'synthetic':
            note = (
                'The synthetic stand-in is not DFEW: its numbers are not expected to match '
                "the authors'."
            )
    elif name == 'afew':
        run = 'AFEW'
    else:
        return None
    recipe, ours = RECIPES[curves()[run].group], _settings(config)
    differences = tuple(
        f'{key} {ours[key]:g} (theirs {value:g})'
        if isinstance(value, float)
        else f'{key} {ours[key]} (theirs {value})'
        for key, value in recipe.items()
        if ours[key] != value
    )
    return Comparison(run, differences, note)


# ---- The reproduction report --------------------------------------------------------------


def _row(curve: Curve, best: dict, last: dict) -> dict[str, Any]:
    """Ours (`best` / `last`: epoch, war, uar) beside the curve's best and last epochs."""
    row: dict[str, Any] = {'reference': curve.name}
    for which, ours, epoch in (('best', best, curve.best_epoch), ('last', last, curve.num_epochs)):
        theirs = curve.war(epoch)
        row[which] = {
            **ours,
            'reference_epoch': epoch,
            'reference_war': theirs,
            'difference': ours['war'] - theirs,
        }
    return row


def _ours(epoch_result) -> dict[str, Any]:
    return {
        'epoch': epoch_result.epoch,
        'war': epoch_result.test['war'],
        'uar': epoch_result.test['uar'],
    }


def reproduction_rows(runs: Mapping[str, Any], pooled: Mapping[str, dict] | None = None) -> dict:
    """Per run (label -> `RunResults`), ours vs the authors' best- and last-epoch WAR
    (fractions, differences ours - theirs) and our UAR; runs without a reference are left
    out. With several runs, all compared: 'mean over folds', and 'pooled (all folds)'
    from `pooled` ('best' / 'last' -> `metrics.summarize` of the summed matrices), the
    authors' pooled WAR being their correct clips over their test clips (TEST_CLIPS)."""
    rows, used = {}, []
    for label, results in runs.items():
        comparison = Comparison.from_dict(results.reference)
        if comparison is None or results.best is None:
            continue
        used.append(comparison.curve)
        rows[label] = _row(comparison.curve, _ours(results.best), _ours(results.last))
    if len(rows) < 2 or len(rows) != len(runs):
        return rows
    fold_rows = list(rows.values())
    mean = {'reference': 'mean'}
    for which in ('best', 'last'):
        mean[which] = {
            key: float(np.mean([r[which][key] for r in fold_rows]))
            for key in ('war', 'uar', 'reference_war', 'difference')
        }
    rows['mean over folds'] = mean
    if pooled:
        clips = np.array([TEST_CLIPS[c.name] for c in used])
        pooled_row = {'reference': 'pooled'}
        for which in ('best', 'last'):
            theirs_war = np.array([r[which]['reference_war'] for r in fold_rows])
            theirs = float(np.sum(theirs_war * clips) / clips.sum())
            ours = pooled[which]
            pooled_row[which] = {
                'war': ours['war'],
                'uar': ours['uar'],
                'reference_war': theirs,
                'difference': ours['war'] - theirs,
            }
        rows['pooled (all folds)'] = pooled_row
    return rows


def format_reproduction(rows: Mapping[str, dict], comparisons: Sequence[Comparison]) -> str:
    """`reproduction_rows` as a markdown table (percent) with its notes; '' if empty."""
    if not rows:
        return ''

    def pct(value: float | None) -> str:
        return '-' if value is None else f'{100 * value:.2f}'

    def epochs(block: dict) -> str:
        return f'{block["epoch"]} / {block["reference_epoch"]}' if 'epoch' in block else '-'

    header = (
        "| | authors' run | best epoch (ours / theirs) | best WAR ours | theirs | difference "
        '| last epoch (ours / theirs) | last WAR ours | theirs | difference '
        '| UAR ours: best | last |'
    )
    lines = [header, '|' + '---|' * 12]
    for label, row in rows.items():
        best, last = row['best'], row['last']
        cells = [
            label,
            row['reference'],
            epochs(best),
            pct(best['war']),
            pct(best['reference_war']),
            f'{100 * best["difference"]:+.2f}',
            epochs(last),
            pct(last['war']),
            pct(last['reference_war']),
            f'{100 * last["difference"]:+.2f}',
            pct(best['uar']),
            pct(last['uar']),
        ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    by_recipe: dict[tuple, list[str]] = {}
    for c in comparisons:
        by_recipe.setdefault((c.differences, c.note), []).append(c.run)
    notes = [_describe(runs, *key) for key, runs in by_recipe.items()]
    lines += [
        '',
        f'Test WAR in percent; theirs from {SOURCE} (their best epoch: their best test epoch; '
        'their logs have no UAR).',
        *notes,
    ]
    return '\n'.join(lines)


def plot_reproduction(runs: Mapping[str, Any], path: str) -> bool:
    """Test WAR per epoch, each run (label -> `RunResults`) solid over its authors' curve
    (dashed, same colour), on the authors' spread (shaded) and the warning floor (dotted),
    saved as a PNG at `path`; False (nothing written) where no run has a reference."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from former_dfer_jax.training import metrics

    compared = {
        label: (results, Comparison.from_dict(results.reference))
        for label, results in runs.items()
        if results.reference and results.history
    }
    if not compared:
        return False
    last = max(results.history[-1]['epoch'] for results, _ in compared.values())
    figure = Figure(figsize=(9, 5.5), layout='constrained')
    axes = figure.add_subplot()
    for name in dict.fromkeys(c.curve.group for _, c in compared.values()):
        epochs = np.arange(1, min(last, group(name)[0].num_epochs) + 1)
        low_high = np.array([spread(name, e) for e in epochs])
        axes.fill_between(
            epochs,
            100 * low_high[:, 0],
            100 * low_high[:, 1],
            color='0.85',
            label=f"authors' {name} spread",
        )
        axes.plot(
            epochs, [100 * floor(name, e) for e in epochs], ':', color='0.4', label='warning floor'
        )
    for i, (label, (results, comparison)) in enumerate(compared.items()):
        colour = f'C{i % 10}'
        curve = comparison.curve
        epochs = np.arange(1, min(last, curve.num_epochs) + 1)
        axes.plot(
            epochs,
            100 * curve.test_war[: len(epochs)],
            '--',
            color=colour,
            alpha=0.7,
            label=f"{curve.name} (authors')",
        )
        evaluated = [h for h in results.history if 'test' in h]
        axes.plot(
            [h['epoch'] for h in evaluated],
            [100 * h['test']['war'] for h in evaluated],
            '-',
            color=colour,
            linewidth=2,
            marker='.' if last <= 30 else None,
            label=f'{label} (ours)',
        )
    notes = {c.note for _, c in compared.values() if c.note}
    axes.set_title(
        "Test WAR per epoch: ours (solid) over the authors' logs (dashed)"
        + ('\n' + ' '.join(sorted(notes)) if notes else ''),
        fontsize=10,
    )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel('epoch')
    axes.set_ylabel('test WAR (%)')
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, ncol=2, loc='lower right')
    metrics.save_figure(figure, path)
    return True
