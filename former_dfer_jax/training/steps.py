"""The pure functions that run under `jax.jit`: the optimizer, one train step, one eval step.

Everything here is a function of its arguments only (no globals), so the same step runs
on one CPU, on every local GPU, or across hosts: sharding is decided by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct

LearningRateSchedule = Callable[[jax.Array], jax.Array]


class TrainState(struct.PyTreeNode):
    """Everything a training run carries from step to step.

    The model lives as NNX state split in two: `params` (what the optimizer updates) and
    `rest` (BatchNorm running statistics and any other non-trainable variable). The
    graph definitions are static; `model()` rebuilds a live module, e.g. in a notebook.
    """

    step: jax.Array
    params: nnx.State
    rest: nnx.State
    opt_state: optax.OptState
    train_graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    eval_graphdef: nnx.GraphDef = struct.field(pytree_node=False)

    def model(self, train: bool = False) -> nnx.Module:
        graphdef = self.train_graphdef if train else self.eval_graphdef
        return nnx.merge(graphdef, self.params, self.rest)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.GraphDef, nnx.State, nnx.State]:
    """(train graphdef, eval graphdef, params, rest) of `model`.

    BatchNorm's mode is a static attribute of the graph, so train and eval get one graph
    definition each over the same state.
    """
    model.train()
    train_graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    eval_graphdef = nnx.graphdef(model)
    model.train()
    return train_graphdef, eval_graphdef, params, rest


# ---- Optimizer ----------------------------------------------------------------------------


def step_decay_schedule(
    opt_config: ml_collections.ConfigDict, steps_per_epoch: int
) -> LearningRateSchedule:
    """torch StepLR stepped once per epoch: lr * factor ** (epoch // every), as optax's
    staircase exponential decay over `every` epochs' worth of steps."""
    return optax.exponential_decay(
        init_value=opt_config.learning_rate,
        transition_steps=opt_config.lr_decay_every_epochs * steps_per_epoch,
        decay_rate=opt_config.lr_decay_factor,
        staircase=True,
    )


OPTIMIZERS = ('sgd', 'adamw')


def make_optimizer(
    opt_config: ml_collections.ConfigDict, schedule: LearningRateSchedule
) -> optax.GradientTransformation:
    """The reference's SGD (default), or AdamW.

    'sgd' is torch.optim.SGD with momentum and coupled weight decay on every parameter:
    torch adds `wd * param` to the gradient before the momentum buffer, and chaining
    `add_decayed_weights` before `sgd` does exactly that (not AdamW-style decoupling).
    'adamw' (torch.optim.AdamW semantics: decay decoupled and scaled by the learning rate)
    trains the model from scratch in far fewer steps; the synthetic demo uses it.
    """
    name = opt_config.get('name', 'sgd')
    if name == 'sgd':
        return optax.chain(
            optax.add_decayed_weights(opt_config.weight_decay),
            optax.sgd(schedule, momentum=opt_config.momentum or None),
        )
    if name == 'adamw':
        return optax.adamw(schedule, weight_decay=opt_config.weight_decay)
    raise ValueError(f'optimizer.name={name!r}: expected one of {OPTIMIZERS}')


# ---- Steps --------------------------------------------------------------------------------


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the batch, in float32 whatever the compute dtype."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return losses.mean()


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    tx: optax.GradientTransformation,
    schedule: LearningRateSchedule,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a (global) batch; BatchNorm statistics are updated in the step."""

    # Merge once at the jit level and differentiate the module with nnx.value_and_grad:
    # BatchNorm mutates its statistics in the forward pass, and NNX variables may only
    # be mutated at the trace level they were created in.
    model = nnx.merge(state.train_graphdef, state.params, state.rest)

    def loss_fn(model: nnx.Module) -> tuple[jax.Array, jax.Array]:
        logits = model(batch['video'])
        return cross_entropy(logits, batch['label']), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {
        'loss': loss,
        'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
        'learning_rate': schedule(state.step),
    }
    new_state = state.replace(step=state.step + 1, params=params, rest=rest, opt_state=opt_state)
    return new_state, metrics


def eval_step(
    params: nnx.State,
    rest: nnx.State,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    num_classes: int,
) -> dict[str, jax.Array]:
    """Confusion-matrix counts and summed loss of the real (mask=True) clips of a batch.

    Returning sums rather than per-clip outputs keeps the result small and replicated,
    and makes padding clips vanish exactly. `graphdef` is the model's eval-mode graph.
    """
    model = nnx.merge(graphdef, params, rest)
    logits = model(batch['video']).astype(jnp.float32)
    mask = batch['mask'].astype(jnp.float32)
    true = jax.nn.one_hot(batch['label'], num_classes) * mask[:, None]
    predicted = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    return {
        'confusion': jnp.einsum('bi,bj->ij', true, predicted).astype(jnp.int32),
        'loss_sum': jnp.sum(losses * mask),
    }


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation) -> TrainState:
    """A step-0 TrainState of `model` (which it leaves in train mode)."""
    train_graphdef, eval_graphdef, params, rest = split_model(model)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        train_graphdef=train_graphdef,
        eval_graphdef=eval_graphdef,
    )


def model_state_dict(state: TrainState) -> dict[str, Any]:
    """The model's full NNX state (params and statistics) as a pure dict, for Orbax."""
    return nnx.to_pure_dict(nnx.merge_state(state.params, state.rest))
