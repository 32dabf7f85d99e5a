"""Open a stored run: the one way every tool (evaluate, predict, explain) and your own code
gets a trained model with what it needs to be used.

    from former_dfer_jax.inference import open_run
    run = open_run('runs/dfew_fd1')            # best checkpoint; or 'latest', or a step dir
    probabilities = run.predict(clips)         # clips: [B, T, H, W, 3] in [0, 1]
    run.class_names, run.num_segments, run.segment_length, run.step
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
from flax import nnx

from former_dfer_jax.data import sources
from former_dfer_jax.errors import UserError
from former_dfer_jax.training import checkpointing
from former_dfer_jax.training.results import RESULTS_FILE


@dataclasses.dataclass(frozen=True)
class Run:
    """A stored run's model (in eval mode) and what using it needs: the config it was
    trained with, its class names, the U x V frame sampling, and where it came from."""

    model: nnx.Module
    config: ml_collections.ConfigDict
    class_names: tuple[str, ...]
    step: int
    run_dir: str
    checkpoint_dir: str

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.run_dir))

    @property
    def num_segments(self) -> int:
        return int(self.config.data.num_segments)

    @property
    def segment_length(self) -> int:
        return int(self.config.data.segment_length)

    def predict(self, clips: jax.Array) -> jax.Array:
        """Class probabilities for clips `[B, T, H, W, 3]` in [0, 1]."""
        return jax.nn.softmax(self.model(clips), axis=-1)


def open_run(
    path: str | os.PathLike,
    which: str = 'best',
    *,
    model_config: ml_collections.ConfigDict | None = None,
) -> Run:
    """The run at `path`: a run directory (`which` = 'best', falling back to the latest
    where no best exists, or 'latest') or one checkpoint step directory inside it.

    The model is built from the config stored beside the checkpoint and returned in eval
    mode. With `model_config`, a run of another model is refused key by key. Raises a
    `CheckpointError` (a UserError: one line for the user) for anything that is not a run.
    """
    model, stored = checkpointing.restore_model(os.fspath(path), which, model_config=model_config)
    model.eval()
    config = stored.config
    u, v = int(config.data.num_segments), int(config.data.segment_length)
    if u * v != int(config.model.num_frames):
        raise checkpointing.CheckpointError(
            f'{stored.run_dir}: data.num_segments x data.segment_length = {u} x {v} is not '
            f'model.num_frames = {config.model.num_frames}'
        )
    return Run(
        model=model,
        config=config,
        class_names=class_names_of(stored.run_dir, config),
        step=stored.step,
        run_dir=stored.run_dir,
        checkpoint_dir=stored.directory,
    )


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """DFEW's names for 7 classes, MAFW's for 11, else class_<i> (a bare model's names)."""
    for names in sources.DATASET_CLASSES.values():
        if len(names) == num_classes:
            return tuple(names)
    return tuple(f'class_{i}' for i in range(num_classes))


def class_names_of(run_dir: str, config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """A run's class names: those its training recorded (results.json), else its dataset's
    (a user's own classes.txt included), else class_<i>."""
    num_classes = int(config.model.num_classes)
    try:
        with open(os.path.join(run_dir, RESULTS_FILE)) as f:
            names = tuple(json.load(f).get('class_names') or ())
    except (OSError, json.JSONDecodeError):
        names = ()
    if len(names) == num_classes:
        return names
    data = config.get('data', ml_collections.ConfigDict())
    try:
        names = sources.class_names(
            data.get('name', 'dfew'),
            root=data.get('root', ''),
            annotation_dir=data.get('annotation_dir', ''),
        )
    except UserError:  # e.g. an own dataset's classes.txt moved away
        names = ()
    if len(names) == num_classes:
        return tuple(names)
    return tuple(f'class_{i}' for i in range(num_classes))
