"""Training and evaluation loop: `train_and_evaluate(config, workdir)`.

Sections, in the order they run: mesh, input, model, optimizer, update step,
checkpoint (resume / fine-tune), loop (train, evaluate, log, save).

A workdir is resumable at any point: the latest checkpoint records the global step, and
the input pipeline can restart an epoch at any batch, so a run stopped mid-epoch (SIGTERM,
SIGINT, preemption) continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from former_dfer_jax import checkpointing, data, metrics, steps
from former_dfer_jax.models import build_model

RESULTS_FILE = 'results.json'


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, incompatible workdir)."""


# ---- Mesh -----------------------------------------------------------------------------------


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D ('data',) mesh over every device of every process."""
    return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(AxisType.Auto,))


def global_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's rows of a batch -> one array sharded over the global 'data' axis."""
    return {
        key: jax.make_array_from_process_local_data(sharding, value)
        for key, value in batch.items()
        if key in ('video', 'label', 'mask')
    }


# ---- Preemption -------------------------------------------------------------------------------


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop polls, so it can save and exit cleanly."""

    def __init__(self):
        self._requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading_is_main():
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

    def requested(self) -> bool:
        """True on every process once any process was asked to stop."""
        if jax.process_count() == 1:
            return self._requested
        flags = multihost_utils.process_allgather(np.array(self._requested))
        return bool(np.any(flags))


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ---- Results bookkeeping ----------------------------------------------------------------------


def confusion_over_split(
    eval_fn,
    params: nnx.State,
    rest: nnx.State,
    config: ml_collections.ConfigDict,
    split: str,
    batch_sharding: NamedSharding,
    num_classes: int,
) -> np.ndarray:
    """Confusion matrix over every clip of `split` (padding masked out).

    `eval_fn(params, rest, batch)` is a jitted `steps.eval_step`.
    """
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for batch in data.load(config, split):
        out = eval_fn(params, rest, global_batch(batch, batch_sharding))
        confusion += np.asarray(jax.device_get(out['confusion']), np.int64)
    return confusion


def evaluate_model(
    model: nnx.Module, config: ml_collections.ConfigDict, split: str = 'test'
) -> dict[str, Any]:
    """UAR / WAR / per-class recall / confusion matrix of `model` on `split`."""
    mesh = make_mesh()
    replicated = NamedSharding(mesh, P())
    info = data.info(config)
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = jax.device_put((params, rest), replicated)
    eval_fn = jax.jit(
        functools.partial(steps.eval_step, graphdef=graphdef, num_classes=info.num_classes),
        out_shardings=replicated,
    )
    confusion = confusion_over_split(
        eval_fn, params, rest, config, split, NamedSharding(mesh, P('data')), info.num_classes
    )
    return metrics.summarize(confusion, info.class_names)


def _write_results(workdir: str, results: dict) -> None:
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, RESULTS_FILE)
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)


def _describe_protocol(selection_split: str) -> str:
    if selection_split == 'test':
        return (
            'reference protocol: "best" is the epoch with the best TEST accuracy '
            '(optimistic, as in the authors\' code and the paper); "last" is the final epoch'
        )
    return (
        'validation protocol: "best" is the epoch with the best metric on a stratified '
        'validation split carved out of the training fold; its test numbers are honest'
    )


# ---- Fine-tuning ------------------------------------------------------------------------------


def _load_init_weights(model: nnx.Module, config: ml_collections.ConfigDict) -> None:
    """Loads `config.init_from` into `model`; optionally keeps the fresh classifier."""
    run_dir, manager_dir, step = checkpointing.resolve_checkpoint(config.init_from, 'best')
    current = dict(_flat_items(nnx.to_pure_dict(nnx.state(model))))
    # Restored without a target, so list indices come back as strings: match on str keys.
    stored = {
        tuple(map(str, key)): value
        for key, value in _flat_items(checkpointing.restore_model_state(manager_dir, step, None))
    }
    head = tuple(model.classifier_path()) if hasattr(model, 'classifier_path') else ()
    merged, reinitialised, problems = {}, [], []
    for key, value in current.items():
        name = '/'.join(map(str, key))
        is_head = bool(head) and key[: len(head)] == head
        loaded = stored.get(tuple(map(str, key)))
        if is_head and config.reinit_classifier:
            merged[key] = value
            reinitialised.append(name)
        elif loaded is None:
            problems.append(f'{name}: missing in the checkpoint')
        elif np.shape(loaded) != np.shape(value):
            hint = ' (set reinit_classifier=True for a new class count)' if is_head else ''
            problems.append(
                f'{name}: shape {np.shape(loaded)} in the checkpoint vs {np.shape(value)} '
                f'in the model{hint}'
            )
        else:
            merged[key] = loaded
    if problems:
        raise TrainingError(
            f'init_from={config.init_from} ({run_dir}, step {step}) does not fit the model:\n  '
            + '\n  '.join(problems)
        )
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, _unflatten(merged))
    nnx.update(model, state)
    logging.info(
        'Initialised from %s (step %d)%s.',
        run_dir,
        step,
        ', classifier re-initialised' if reinitialised else '',
    )


def _flat_items(tree: Any, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _flat_items(value, (*prefix, key))
    else:
        yield prefix, tree


def _unflatten(flat: dict[tuple, Any]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = value
    return tree


# ---- The loop ---------------------------------------------------------------------------------


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None
) -> steps.TrainState:
    """Trains `config` in `workdir`, evaluating every epoch; returns the final TrainState.

    Resumes from the latest checkpoint in `workdir` if there is one. `stop_at_step`
    behaves as if a stop signal arrived after that global step (for tests and debugging):
    the run saves a checkpoint there and returns.
    """
    os.makedirs(workdir, exist_ok=True)
    is_chief = jax.process_index() == 0

    # Mesh. -------------------------------------------------------------------------------
    mesh = make_mesh()
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P('data'))
    if config.batch_size % jax.device_count():
        raise ValueError(
            f'batch_size {config.batch_size} is not divisible by the {jax.device_count()} devices'
        )

    # Input. ------------------------------------------------------------------------------
    info = data.info(config)
    steps_per_epoch = info.steps_per_epoch
    if steps_per_epoch < 1:
        raise ValueError(
            f'{info.num_clips["train"]} training clips are fewer than one '
            f'batch of {config.batch_size}'
        )
    selection_split = 'validation' if config.data.val_fraction > 0 else 'test'
    total_steps = steps_per_epoch * config.num_epochs

    # Model. ------------------------------------------------------------------------------
    model = build_model(config.model, rngs=nnx.Rngs(config.seed))

    # Optimizer. --------------------------------------------------------------------------
    schedule = steps.step_decay_schedule(config.optimizer, steps_per_epoch)
    tx = steps.make_optimizer(config.optimizer, schedule)

    # Checkpoint: resume, else fine-tune from init_from, else fresh. ------------------------
    ckpts = checkpointing.RunCheckpoints(workdir, keep_latest=config.checkpoint.keep_latest)
    latest_step = ckpts.latest_step()
    if latest_step is not None:
        stored = checkpointing.read_config(workdir)
        differences = checkpointing.model_config_differences(stored.model, config.model)
        if differences:
            raise TrainingError(
                f'{workdir} holds checkpoints of a different model config; use another '
                'workdir or the same model settings. Differences:\n  ' + '\n  '.join(differences)
            )
    elif config.init_from:
        _load_init_weights(model, config)

    state = steps.init_train_state(model, tx)
    del model
    meta: dict[str, Any] = {'history': [], 'best': None}
    if latest_step is not None:
        model_state, opt_state, meta = ckpts.restore(
            latest_step,
            checkpointing.abstract_like(steps.model_state_dict(state), replicated),
            checkpointing.abstract_like(state.opt_state, replicated),
        )
        full = nnx.merge_state(state.params, state.rest)
        nnx.replace_by_pure_dict(full, model_state)
        params, rest = nnx.split_state(full, nnx.Param, ...)
        state = state.replace(
            step=jnp.asarray(latest_step, jnp.int32), params=params, rest=rest, opt_state=opt_state
        )
        logging.info(
            'Resumed from %s at step %d (epoch %d, batch %d).',
            workdir,
            latest_step,
            latest_step // steps_per_epoch,
            latest_step % steps_per_epoch,
        )
    elif is_chief:
        checkpointing.write_config(workdir, config)
    state = jax.device_put(state, replicated)

    # Update step. ----------------------------------------------------------------------------
    train_fn = jax.jit(
        functools.partial(steps.train_step, tx=tx, schedule=schedule),
        donate_argnums=0,
        out_shardings=(replicated, replicated),
    )
    eval_fn = jax.jit(
        functools.partial(
            steps.eval_step, graphdef=state.eval_graphdef, num_classes=info.num_classes
        ),
        out_shardings=replicated,
    )

    # Logging. --------------------------------------------------------------------------------
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
    step = int(latest_step or 0)
    if step == 0:
        writer.write_hparams(_flat_config(config))
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=total_steps, writer=writer, every_secs=60.0
    )
    hooks = [report_progress]

    results = {
        'protocol': _describe_protocol(selection_split),
        'selection_split': selection_split,
        'selection_metric': config.checkpoint.best_metric,
        'class_names': list(info.class_names),
        'workdir': os.path.abspath(workdir),
        'history': meta.get('history', []),
        'best': meta.get('best'),
        'last': meta.get('last'),
        'finished': False,
    }

    def save(step: int, best_value: float | None = None) -> None:
        ckpts.save(
            step,
            steps.model_state_dict(state),
            state.opt_state,
            {
                'step': step,
                'epoch': step // steps_per_epoch,
                'history': results['history'],
                'best': results['best'],
                'last': results['last'],
                'best_value': best_value,
            },
            best_value=best_value,
        )

    # Loop. -------------------------------------------------------------------------------------
    logging.info(
        'Training %d epochs x %d steps (global batch %d on %d devices, %d processes).',
        config.num_epochs,
        steps_per_epoch,
        config.batch_size,
        jax.device_count(),
        jax.process_count(),
    )
    pending: list[dict[str, jax.Array]] = []
    epoch_start_time = time.time()
    with StopRequest() as stop:
        while step < total_steps:
            epoch, start_batch = divmod(step, steps_per_epoch)
            epoch_sums = {'loss': 0.0, 'accuracy': 0.0, 'count': 0}
            epoch_start_time = time.time()
            first_step_of_epoch = step
            for batch in data.load(config, 'train', epoch=epoch, start_batch=start_batch):
                with jax.profiler.StepTraceAnnotation('train', step_num=step):
                    state, step_metrics = train_fn(state, global_batch(batch, batch_sharding))
                step += 1
                pending.append(step_metrics)
                for hook in hooks:
                    hook(step)
                at_log = step % config.log_every_steps == 0 or step % steps_per_epoch == 0
                if at_log:
                    _flush(
                        pending,
                        epoch_sums,
                        writer,
                        step,
                        steps_per_epoch,
                        epoch,
                        first_step_of_epoch,
                        epoch_start_time,
                        config,
                    )
                if stop_at_step is not None and step == stop_at_step:
                    stop.request()
                if (
                    step % steps_per_epoch
                    and config.checkpoint.every_steps
                    and step % config.checkpoint.every_steps == 0
                ):
                    _flush(
                        pending,
                        epoch_sums,
                        writer,
                        step,
                        steps_per_epoch,
                        epoch,
                        first_step_of_epoch,
                        epoch_start_time,
                        config,
                    )
                    save(step)
                if step % steps_per_epoch and stop.requested():
                    _flush(
                        pending,
                        epoch_sums,
                        writer,
                        step,
                        steps_per_epoch,
                        epoch,
                        first_step_of_epoch,
                        epoch_start_time,
                        config,
                    )
                    save(step)
                    ckpts.wait_until_finished()
                    logging.info(
                        'Stopped at step %d (epoch %d, batch %d); the next run in %s resumes here.',
                        step,
                        epoch,
                        step % steps_per_epoch,
                        workdir,
                    )
                    writer.flush()
                    return state
                if step % steps_per_epoch == 0:
                    break
            if step % steps_per_epoch:
                raise TrainingError(
                    f'the input pipeline ended epoch {epoch} after step {step}; '
                    f'expected {steps_per_epoch} steps per epoch'
                )
            _flush(
                pending,
                epoch_sums,
                writer,
                step,
                steps_per_epoch,
                epoch,
                first_step_of_epoch,
                epoch_start_time,
                config,
            )

            # Evaluate at the end of each epoch (and always after the last one). ---------------
            epoch_record: dict[str, Any] = {
                'epoch': epoch + 1,
                'step': step,
                'train_loss': epoch_sums['loss'] / max(epoch_sums['count'], 1),
                'train_accuracy': epoch_sums['accuracy'] / max(epoch_sums['count'], 1),
                'learning_rate': float(schedule(jnp.asarray(step - 1))),
            }
            best_value = None
            last_epoch = step == total_steps
            if (epoch + 1) % config.eval_every_epochs == 0 or last_epoch:
                splits = ['test'] if selection_split == 'test' else ['validation', 'test']
                for split in splits:
                    confusion = confusion_over_split(
                        eval_fn,
                        state.params,
                        state.rest,
                        config,
                        split,
                        batch_sharding,
                        info.num_classes,
                    )
                    summary = metrics.summarize(confusion, info.class_names)
                    epoch_record[split] = summary
                    _write_eval(writer, step, split, summary, info.class_names)
                value = epoch_record[selection_split][config.checkpoint.best_metric]
                best = results['best']
                if best is None or value > best['selection_value']:
                    results['best'] = {
                        'epoch': epoch + 1,
                        'step': step,
                        'selected_on': f'{selection_split} {config.checkpoint.best_metric}',
                        'selection_value': value,
                        'test': epoch_record['test'],
                    }
                    best_value = value
                results['last'] = {'epoch': epoch + 1, 'step': step, 'test': epoch_record['test']}
                logging.info(
                    '%s',
                    _epoch_line(
                        epoch_record, config, time.time() - epoch_start_time, selection_split
                    ),
                )
            results['history'].append(_compact(epoch_record))
            save(step, best_value)
            results['finished'] = last_epoch
            _write_results(workdir, results)
            writer.flush()
            if stop.requested() and not last_epoch:
                ckpts.wait_until_finished()
                logging.info(
                    'Stopped after epoch %d; the next run in %s resumes here.', epoch + 1, workdir
                )
                return state

    ckpts.wait_until_finished()
    ckpts.close()
    writer.flush()
    return state


# ---- Logging helpers ----------------------------------------------------------------------------


def _flush(
    pending: list,
    sums: dict,
    writer,
    step: int,
    steps_per_epoch: int,
    epoch: int,
    first_step: int,
    start_time: float,
    config: ml_collections.ConfigDict,
) -> None:
    """Fetches buffered step metrics, checks they are finite, logs their mean."""
    if not pending:
        return
    fetched = jax.device_get(pending)
    pending.clear()
    losses = np.array([m['loss'] for m in fetched], np.float64)
    if not np.all(np.isfinite(losses)):
        bad = step - len(losses) + int(np.argmax(~np.isfinite(losses))) + 1
        raise TrainingError(
            f'non-finite training loss at step {bad} (epoch {epoch + 1}); stopping. The last '
            'good checkpoint is kept; lower the learning rate or check the input data.'
        )
    accuracy = np.array([m['accuracy'] for m in fetched], np.float64)
    sums['loss'] += losses.sum()
    sums['accuracy'] += accuracy.sum()
    sums['count'] += len(losses)
    writer.write_scalars(
        step,
        {
            'train/loss': losses.mean(),
            'train/accuracy': accuracy.mean(),
            'train/learning_rate': float(fetched[-1]['learning_rate']),
        },
    )
    done = step - epoch * steps_per_epoch
    elapsed = time.time() - start_time
    rate = (step - first_step) / elapsed if elapsed > 0 else float('nan')
    eta = (steps_per_epoch - done) / rate if rate > 0 else float('nan')
    logging.info(
        'epoch %d/%d  step %d/%d  loss %.4f  acc %.2f%%  %.2f steps/s  epoch ETA %s',
        epoch + 1,
        config.num_epochs,
        done,
        steps_per_epoch,
        losses.mean(),
        100 * accuracy.mean(),
        rate,
        _duration(eta),
    )


def _write_eval(writer, step: int, split: str, summary: dict, class_names) -> None:
    scalars = {f'{split}/war': summary['war'], f'{split}/uar': summary['uar']}
    for name, recall in summary['per_class_recall'].items():
        if recall is not None:
            scalars[f'{split}/recall/{name}'] = recall
    writer.write_scalars(step, scalars)
    image = metrics.confusion_matrix_image(np.array(summary['confusion_matrix']), class_names)
    writer.write_images(step, {f'{split}/confusion_matrix': image[None]})


def _epoch_line(
    record: dict, config: ml_collections.ConfigDict, seconds: float, selection_split: str
) -> str:
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
    parts.append(f'lr {record["learning_rate"]:.2g}')
    parts.append(f'{seconds:.0f}s')
    del selection_split
    return '  '.join(parts)


def _compact(record: dict) -> dict:
    """An epoch record for the history: metrics without the confusion matrices."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out[key] = {k: v for k, v in value.items() if k != 'confusion_matrix'}
        else:
            out[key] = value
    return out


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return '?'
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'


def _flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as flat 'data.fold'-style keys with scalar values, for hparams."""
    return {
        key: value if isinstance(value, int | float | str | bool) else str(value)
        for key, value in checkpointing.flatten_dict(config.to_dict()).items()
    }
