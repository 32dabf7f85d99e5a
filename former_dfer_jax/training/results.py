"""`results.json`: what a training run reports, as one typed structure.

`train` writes it after every epoch; `main`, `evaluate` and `cross_validate` read it
through `RunResults.read`, never by string keys of their own.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from former_dfer_jax import files

RESULTS_FILE = 'results.json'


@dataclasses.dataclass
class EpochResult:
    """The test metrics of one epoch (`metrics.summarize`), and why it was picked.

    `selected_on` / `selection_value` are set for the best epoch only.
    """

    epoch: int
    step: int
    test: dict[str, Any]
    selected_on: str | None = None
    selection_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass
class RunResults:
    """A run's protocol, per-epoch history, best and last epochs, and whether it finished.

    `reference`: the authors' curve it is compared with (`reference.Comparison.to_dict`),
    None where there is none; `reference_warning`: the early warning, once given.
    """

    protocol: str
    selection_split: str  # 'test' (the reference protocol) or 'validation'
    selection_metric: str  # 'war' | 'uar'
    class_names: list[str]
    workdir: str
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best: EpochResult | None = None
    last: EpochResult | None = None
    finished: bool = False
    reference: dict[str, Any] | None = None
    reference_warning: str | None = None

    def add_epoch(
        self,
        epoch: int,
        step: int,
        train: dict[str, float],
        evaluation: dict[str, dict[str, Any]] | None,
        reference_war: float | None = None,
    ) -> bool:
        """Appends an epoch to the history (train means: loss, accuracy, learning_rate;
        `evaluation`: split -> `metrics.summarize`, None when the epoch was not
        evaluated; `reference_war`: the authors' test WAR at this epoch, kept with the
        difference ours - theirs); an evaluated epoch becomes `last`, and `best` when its
        selection metric beats the best so far. Returns whether it is the new best."""
        record: dict[str, Any] = {
            'epoch': epoch,
            'step': step,
            'train_loss': train['loss'],
            'train_accuracy': train['accuracy'],
            'learning_rate': train['learning_rate'],
        }
        for split, summary in (evaluation or {}).items():
            record[split] = {k: v for k, v in summary.items() if k != 'confusion_matrix'}
        if evaluation is not None and reference_war is not None:
            record['reference'] = {
                'test_war': reference_war,
                'test_war_difference': evaluation['test']['war'] - reference_war,
            }
        self.history.append(record)
        if evaluation is None:
            return False
        self.last = EpochResult(epoch, step, evaluation['test'])
        value = evaluation[self.selection_split][self.selection_metric]
        if self.best is not None and value <= self.best.selection_value:
            return False
        self.best = EpochResult(
            epoch,
            step,
            evaluation['test'],
            selected_on=f'{self.selection_split} {self.selection_metric}',
            selection_value=value,
        )
        return True

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out['best'] = self.best.to_dict() if self.best else None
        out['last'] = self.last.to_dict() if self.last else None
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunResults:
        values = dict(values)
        for key in ('best', 'last'):
            if values.get(key) is not None:
                values[key] = EpochResult(**values[key])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> RunResults:
        return cls.from_dict(json.loads(text))

    def write(self, workdir: str) -> None:
        """Writes `workdir/results.json` atomically (never a half-written file)."""
        files.write_text(results_path(workdir), self.to_json())

    @classmethod
    def read(cls, workdir: str) -> RunResults | None:
        """The results of the run in `workdir`, or None before its first epoch ended."""
        path = results_path(workdir)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return cls.from_json(f.read())


def results_path(workdir: str) -> str:
    return os.path.join(workdir, RESULTS_FILE)
