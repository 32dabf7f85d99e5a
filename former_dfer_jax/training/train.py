"""Training and evaluation loop: `train_and_evaluate(config, workdir)`.

Sections, in the order they run: set-up (mesh, input, optimizer, state: resume, fine-tune
or fresh), the jitted steps, logging, then one loop over global steps whose body is a
flat run of "if it is time to log / evaluate / save / stop" blocks.

Where the authors published the curve of the same run (`reference.match`: DFEW folds,
AFEW), it is written beside ours to TensorBoard (`workdir/reference`), each epoch line and
results.json record the difference to it, and a run far below it is warned of once.

A workdir is resumable at any step: the latest checkpoint records the global step, and
the input pipeline can restart an epoch at any batch, so a run stopped mid-epoch (SIGTERM,
SIGINT, preemption) continues with exactly the batches it would have seen.
"""

import functools
import itertools
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple, Self

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from clu import metrics as clu_metrics
from flax import nnx
from jax.experimental import multihost_utils

from former_dfer_jax import data, files, run_lock
from former_dfer_jax.errors import UserError
from former_dfer_jax.models import build_abstract_model, build_model
from former_dfer_jax.training import (
    checkpointing,
    config_checks,
    evaluation,
    metrics,
    reference,
    sharding,
    steps,
)
from former_dfer_jax.training.results import RunResults


class TrainingError(UserError):
    """A run that cannot go on (non-finite loss, incompatible workdir)."""


# ---- Stop requests ----------------------------------------------------------------------------


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop reads, so that it saves and exits cleanly.

    Every process must stop at the same step. With several processes the flags are agreed
    at the loop's sync points only (log and save steps), not by a collective on every
    step; where JAX's preemption service runs (multi-process `jax.distributed`), its sync
    point is also read on every step, which needs no collective.
    """

    def __init__(self):
        self._requested = False
        self._previous: dict[int, Any] = {}
        self._preemption_service = jax.process_count() > 1

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self._requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        logging.warning(
            'Received %s: saving a checkpoint, then stopping.', signal.Signals(signum).name
        )
        self._requested = True

    def request(self) -> None:
        self._requested = True

    def should_stop(self, step: int, *, sync_point: bool) -> bool:
        """Whether every process stops after `step`; `sync_point`: a step where the
        processes may agree by a collective."""
        if jax.process_count() == 1:
            return self._requested
        if self._preemption_service:
            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    return True
            except RuntimeError:  # the service is off (jax_enable_preemption_service)
                self._preemption_service = False
        if not sync_point:
            return False
        return bool(np.any(multihost_utils.process_allgather(np.array(self._requested))))


# ---- Train metrics ----------------------------------------------------------------------------

NO_STEP = np.iinfo(np.int32).max


@flax.struct.dataclass
class FirstNonFiniteStep(clu_metrics.Metric):
    """The first step whose training loss was not finite (NO_STEP if none was)."""

    step: jax.Array

    @classmethod
    def from_model_output(cls, *, loss: jax.Array, step: jax.Array, **_) -> Self:
        return cls(jnp.where(jnp.isfinite(loss), NO_STEP, step).astype(jnp.int32))

    @classmethod
    def empty(cls) -> Self:
        return cls(jnp.asarray(NO_STEP, jnp.int32))

    def merge(self, other: Self) -> Self:
        return type(self)(jnp.minimum(self.step, other.step))

    def compute(self) -> jax.Array:
        return self.step


@flax.struct.dataclass  # clu reads the fields' annotations: no `from __future__ import annotations`
class TrainMetrics(clu_metrics.Collection):
    """Per-step training metrics, averaged over a log interval or an epoch."""

    loss: clu_metrics.Average.from_output('loss')
    accuracy: clu_metrics.Average.from_output('accuracy')
    learning_rate: clu_metrics.LastValue.from_output('learning_rate')
    first_non_finite_step: FirstNonFiniteStep


def train_step_with_metrics(
    state: steps.TrainState, batch: dict[str, jax.Array], *, tx, schedule
) -> tuple[steps.TrainState, TrainMetrics]:
    """`steps.train_step`, its metrics as a `TrainMetrics` of one step (to merge)."""
    state, out = steps.train_step(state, batch, tx=tx, schedule=schedule)
    return state, TrainMetrics.single_from_model_output(step=state.step, **out)


def computed(train_metrics: TrainMetrics, epoch: int) -> dict[str, float]:
    """The averages of `train_metrics`; a TrainingError naming the first non-finite step."""
    values = {k: float(v) for k, v in jax.device_get(train_metrics.compute()).items()}
    bad = int(values.pop('first_non_finite_step'))
    if bad != NO_STEP:
        raise TrainingError(
            f'non-finite training loss at step {bad} (epoch {epoch}); stopping. The last '
            'good checkpoint is kept; lower the learning rate or check the input data.'
        )
    return values


def _to_json_tree(train_metrics: TrainMetrics) -> dict:
    return jax.tree.map(
        lambda x: np.asarray(x).tolist(), flax.serialization.to_state_dict(train_metrics)
    )


def _from_json_tree(tree: dict | None) -> TrainMetrics:
    if not tree:
        return TrainMetrics.empty()
    values = jax.tree.map(jnp.asarray, tree)  # jnp: clu divides 0 / 0 when merging
    return flax.serialization.from_state_dict(TrainMetrics.empty(), values)


# ---- Set-up helpers -----------------------------------------------------------------------------


def new_results(config: ml_collections.ConfigDict, workdir: str) -> RunResults:
    """The results of a run that has not finished an epoch yet."""
    selection_split = 'validation' if config.data.val_fraction > 0 else 'test'
    if selection_split == 'test':
        protocol = (
            'reference protocol: "best" is the epoch with the best TEST accuracy '
            '(optimistic, as in the authors\' code and the paper); "last" is the final epoch'
        )
    else:
        protocol = (
            'validation protocol: "best" is the epoch with the best metric on a stratified '
            'validation split carved out of the training fold; its test numbers are honest'
        )
    comparison = reference.match(config)
    return RunResults(
        protocol=protocol,
        selection_split=selection_split,
        selection_metric=config.checkpoint.best_metric,
        class_names=list(data.info(config).class_names),
        workdir=os.path.abspath(workdir),
        reference=comparison.to_dict() if comparison else None,
    )


class RunState(NamedTuple):
    """What a run starts from: the train state, its results, the epoch's metrics so far."""

    train: steps.TrainState
    results: RunResults
    epoch_metrics: TrainMetrics


def initial_state(
    config: ml_collections.ConfigDict, workdir: str, ckpts: checkpointing.RunCheckpoints, tx
) -> RunState:
    """Resumes from the latest checkpoint of `workdir`, else starts from `config.init_from`
    or from a fresh initialisation. The state is replicated over the mesh."""
    replicated = sharding.replicated(sharding.make_mesh())
    if ckpts.latest_step() is not None:
        stored = checkpointing.read_config(workdir)
        differences = checkpointing.model_config_differences(stored.model, config.model)
        if differences:
            raise TrainingError(
                f'{workdir} holds checkpoints of a different model config; use another '
                'workdir or the same model settings. Differences:\n  ' + '\n  '.join(differences)
            )
        # Restored straight into the abstract state: nothing is initialised to be overwritten.
        abstract = jax.eval_shape(
            lambda: steps.init_train_state(build_abstract_model(config.model), tx)
        )
        restored = ckpts.restore_latest(
            checkpointing.abstract_like(steps.model_state_dict(abstract), replicated),
            checkpointing.abstract_like(abstract.opt_state, replicated),
        )
        if restored is not None:
            full = nnx.merge_state(abstract.params, abstract.rest)
            nnx.replace_by_pure_dict(full, restored.model_state)
            params, rest = nnx.split_state(full, nnx.Param, ...)
            train_state = abstract.replace(
                step=jax.device_put(jnp.asarray(restored.step, jnp.int32), replicated),
                params=params,
                rest=rest,
                opt_state=restored.optimizer_state,
            )
            logging.info('Resumed from %s at step %d.', workdir, restored.step)
            return RunState(
                train=train_state,
                results=RunResults.from_dict(restored.meta['results']),
                epoch_metrics=_from_json_tree(restored.meta.get('epoch_train_metrics')),
            )
    model = build_model(config.model, rngs=nnx.Rngs(config.seed))
    if config.init_from:
        stored = checkpointing.load_init_weights(
            model, config.init_from, reinit_classifier=config.reinit_classifier
        )
        logging.info(
            'Initialised from %s (step %d)%s.',
            stored.run_dir,
            stored.step,
            ', classifier re-initialised' if config.reinit_classifier else '',
        )
    if jax.process_index() == 0:
        checkpointing.write_config(workdir, config)
    return RunState(
        train=jax.device_put(steps.init_train_state(model, tx), replicated),
        results=new_results(config, workdir),
        epoch_metrics=TrainMetrics.empty(),
    )


def train_batches(config: ml_collections.ConfigDict, first_step: int) -> Iterator[dict]:
    """The training batches from global step `first_step` on, epoch after epoch."""
    steps_per_epoch = data.info(config).steps_per_epoch
    first_epoch, start = divmod(first_step, steps_per_epoch)
    for epoch in itertools.count(first_epoch):
        wanted = steps_per_epoch - start
        count = 0
        for batch in itertools.islice(
            data.load(config, 'train', epoch=epoch, start_batch=start), wanted
        ):
            count += 1
            yield batch
        if count != wanted:
            raise TrainingError(
                f'the input pipeline ended epoch {epoch + 1} after {start + count} batches; '
                f'expected {steps_per_epoch} per epoch'
            )
        start = 0


def _keeping_loss_sums(eval_fn, sums: list):
    """`eval_fn`, which also appends each batch's summed loss to `sums`."""

    def keeping(*args):
        out = eval_fn(*args)
        sums.append(out['loss_sum'])
        return out

    return keeping


def evaluate_splits(eval_fn, state: steps.TrainState, config, splits) -> dict[str, dict]:
    """`metrics.summarize` of each split and its mean cross-entropy ('loss'), the train
    state's model in eval mode."""
    class_names = data.info(config).class_names
    summaries = {}
    for split in splits:
        sums: list = []
        confusion = evaluation.confusion_over_split(
            _keeping_loss_sums(eval_fn, sums), (state.params, state.rest), config, split
        )
        summary = metrics.summarize(confusion, class_names)
        total = float(np.sum(jax.device_get(sums), dtype=np.float64))
        summary['loss'] = total / max(summary['num_clips'], 1)
        summaries[split] = summary
    return summaries


# ---- The loop -------------------------------------------------------------------------------


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None
) -> steps.TrainState:
    """Trains `config` in `workdir`, evaluating every epoch; returns the final TrainState.

    Resumes from the latest checkpoint in `workdir` if there is one. `stop_at_step`
    behaves as if a stop signal arrived after that global step (for tests and debugging):
    the run saves a checkpoint there and returns.
    """
    config_checks.validate(config)  # before any work: a bad value is named at once
    files.require_writable(workdir, 'workdir')
    # The lock first: nothing in the workdir is read or written before it is ours.
    with run_lock.RunLock(workdir), StopRequest() as stop:
        is_chief = jax.process_index() == 0

        # Set-up: mesh, input, optimizer, state. ---------------------------------------------------
        if config.batch_size % jax.device_count():
            raise TrainingError(
                f'batch_size={config.batch_size} is not divisible by the '
                f'{jax.device_count()} devices'
            )
        mesh = sharding.make_mesh()
        batch_sharding = sharding.batch_sharded(mesh)
        info = data.info(config)
        steps_per_epoch = info.steps_per_epoch
        if steps_per_epoch < 1:
            raise TrainingError(
                f'{info.num_clips["train"]} training clips are fewer than one batch '
                f'(batch_size={config.batch_size})'
            )
        total_steps = steps_per_epoch * config.num_epochs
        schedule = steps.step_decay_schedule(config.optimizer, steps_per_epoch)
        tx = steps.make_optimizer(config.optimizer, schedule)
        ckpts = checkpointing.RunCheckpoints(workdir, keep_latest=config.checkpoint.keep_latest)
        run = initial_state(config, workdir, ckpts, tx)
        state, results, epoch_metrics = run.train, run.results, run.epoch_metrics
        first_step = int(state.step)

        # Jitted steps. ----------------------------------------------------------------------------
        replicated = sharding.replicated(mesh)
        train_fn = jax.jit(
            functools.partial(train_step_with_metrics, tx=tx, schedule=schedule),
            donate_argnums=0,
            out_shardings=(replicated, replicated),
        )
        eval_fn = evaluation.make_eval_fn(state.eval_graphdef, info.num_classes)
        eval_splits = ['test'] if results.selection_split == 'test' else ['validation', 'test']

        # Logging. ---------------------------------------------------------------------------------
        writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
        if first_step == 0:
            writer.write_hparams(_flat_config(config))
        comparison = reference.Comparison.from_dict(results.reference)
        if comparison is not None:
            logging.info('%s', comparison.describe())
            if first_step == 0 and is_chief:
                _write_reference(workdir, comparison.curve, config.num_epochs, steps_per_epoch)
        report_progress = periodic_actions.ReportProgress(
            num_train_steps=total_steps, writer=writer, every_secs=60.0
        )
        log_metrics = TrainMetrics.empty()
        logging.info(
            'Training %d epochs x %d steps from step %d (global batch %d, %d devices, '
            '%d processes).',
            config.num_epochs,
            steps_per_epoch,
            first_step,
            config.batch_size,
            jax.device_count(),
            jax.process_count(),
        )

        # The loop. --------------------------------------------------------------------------------
        stop_now, step = False, first_step
        batches = train_batches(config, first_step)
        try:
            for step in range(first_step + 1, total_steps + 1):
                epoch = (step - 1) // steps_per_epoch + 1  # 1-based, as logged
                with jax.profiler.StepTraceAnnotation('train', step_num=step):
                    batch = sharding.global_batch(next(batches), batch_sharding)
                    state, step_metrics = train_fn(state, batch)
                log_metrics = log_metrics.merge(step_metrics)
                epoch_metrics = epoch_metrics.merge(step_metrics)
                report_progress(step)

                epoch_end = step % steps_per_epoch == 0
                periodic_save = bool(config.checkpoint.every_steps) and (
                    step % config.checkpoint.every_steps == 0
                )
                sync_point = epoch_end or periodic_save or step % config.log_every_steps == 0
                if step == stop_at_step:
                    stop.request()
                stop_now = stop.should_stop(step, sync_point=sync_point)
                save_now = epoch_end or periodic_save or stop_now
                log_now = sync_point or stop_now  # a save never stores unchecked steps
                eval_now = epoch_end and (
                    epoch % config.eval_every_epochs == 0 or step == total_steps
                )

                if log_now:
                    means = computed(log_metrics, epoch)
                    log_metrics = TrainMetrics.empty()
                    writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
                    logging.info(
                        'epoch %d/%d  step %d/%d  loss %.4f  acc %.2f%%',
                        epoch,
                        config.num_epochs,
                        step - (epoch - 1) * steps_per_epoch,
                        steps_per_epoch,
                        means['loss'],
                        100 * means['accuracy'],
                    )

                best_value = None
                if epoch_end:
                    summaries = None
                    if eval_now:
                        with report_progress.timed('eval'):
                            summaries = evaluate_splits(eval_fn, state, config, eval_splits)
                        for split, summary in summaries.items():
                            _write_eval(writer, step, split, summary)
                    train_means = computed(epoch_metrics, epoch)
                    epoch_metrics = TrainMetrics.empty()
                    reference_war = comparison.curve.war(epoch) if comparison else None
                    if results.add_epoch(epoch, step, train_means, summaries, reference_war):
                        best_value = results.best.selection_value
                    if summaries and comparison and results.reference_warning is None:
                        warning = comparison.warning(epoch, summaries['test']['war'])
                        if warning:
                            logging.warning('Early warning: %s', warning)
                            results.reference_warning = f'epoch {epoch}: {warning}'
                    results.finished = step == total_steps
                    logging.info('%s', _epoch_line(results.history[-1], config))

                if save_now:
                    with report_progress.timed('checkpoint'):
                        meta = {
                            'step': step,
                            'results': results.to_dict(),
                            'epoch_train_metrics': _to_json_tree(epoch_metrics),
                        }
                        model_state = steps.model_state_dict(state)
                        ckpts.save(step, model_state, state.opt_state, meta, best_value=best_value)
                    if epoch_end and is_chief:
                        results.write(workdir)
                    writer.flush()

                if stop_now:
                    break
        finally:
            # Every save started is finished, also when the run stops on an error.
            ckpts.wait_until_finished()
            ckpts.close()
            writer.flush()
    if stop_now and step < total_steps:
        epoch, batch_in_epoch = divmod(step, steps_per_epoch)
        where = (
            f'after epoch {epoch}'
            if batch_in_epoch == 0
            else f'at step {step} (epoch {epoch + 1}, batch {batch_in_epoch}/{steps_per_epoch})'
        )
        logging.info('Stopped %s; the next run in %s resumes here.', where, workdir)
    return state


# ---- Logging helpers ----------------------------------------------------------------------------


def _write_reference(
    workdir: str, curve: reference.Curve, num_epochs: int, steps_per_epoch: int
) -> None:
    """The authors' curve as its own TensorBoard run, `workdir/reference`: our tags, each
    epoch's figures at our step of that epoch's end, so both lie on one chart."""
    writer = metric_writers.SummaryWriter(os.path.join(workdir, 'reference'))
    for epoch in range(1, min(num_epochs, curve.num_epochs) + 1):
        writer.write_scalars(epoch * steps_per_epoch, curve.scalars(epoch))
    writer.close()


def _write_eval(writer: metric_writers.MetricWriter, step: int, split: str, summary: dict) -> None:
    scalars = {
        f'{split}/war': summary['war'],
        f'{split}/uar': summary['uar'],
        f'{split}/loss': summary['loss'],
    }
    for name, recall in summary['per_class_recall'].items():
        if recall is not None:
            scalars[f'{split}/recall/{name}'] = recall
    writer.write_scalars(step, scalars)
    class_names = list(summary['per_class_recall'])
    image = metrics.confusion_matrix_image(np.array(summary['confusion_matrix']), class_names)
    writer.write_images(step, {f'{split}/confusion_matrix': image[None]})


def _epoch_line(record: dict, config: ml_collections.ConfigDict) -> str:
    parts = [
        f'epoch {record["epoch"]}/{config.num_epochs}',
        f'train loss {record["train_loss"]:.4f} acc {100 * record["train_accuracy"]:.2f}%',
    ]
    for split in ('validation', 'test'):
        if split in record:
            parts.append(
                f'{split} WAR {100 * record[split]["war"]:.2f}% '
                f'UAR {100 * record[split]["uar"]:.2f}%'
            )
    if 'reference' in record:
        ref = record['reference']
        parts.append(
            f"authors' WAR {100 * ref['test_war']:.2f}% "
            f'(ours {100 * ref["test_war_difference"]:+.2f})'
        )
    parts.append(f'lr {record["learning_rate"]:.2g}')
    return '  '.join(parts)


def _flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as flat 'data.fold'-style keys with scalar values, for hparams."""
    return {
        key: value if isinstance(value, int | float | str | bool) else str(value)
        for key, value in checkpointing.flatten_dict(config.to_dict()).items()
    }
