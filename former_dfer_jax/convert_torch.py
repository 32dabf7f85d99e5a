"""Import a checkpoint of the authors' PyTorch code (zengqunzhao/Former-DFER).

    python -m former_dfer_jax.convert_torch --checkpoint=model_best.pth --output=runs/imported

The authors' checkpoints are of the reference architecture (the default); an ablation's
checkpoint needs its config, e.g. `--config=configs/ablations.py:resnet18_gru`.

The file is read without executing anything it contains: a restricted unpickler rebuilds
only tensors, storages and OrderedDicts, and turns every other pickled object (the
checkpoint's `recorder`, the training script's RecorderMeter) into an inert placeholder
without calling its class. Zip-format files (every torch >= 1.6) need only numpy; the
legacy pre-1.6 format needs torch, imported on demand.

Layouts: conv weights OIHW -> HWIO, linear weights [out, in] -> [in, out] (the qkv
weight keeps its [q | k | v], heads-outer order), BatchNorm weight / bias / running_mean
/ running_var -> scale / bias / mean / var; num_batches_tracked is checked and dropped.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import types
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from former_dfer_jax import cli
from former_dfer_jax.errors import UserError
from former_dfer_jax.models import FormerDFER, build_abstract_model, build_model
from former_dfer_jax.training import config_checks


class ConversionError(UserError, ValueError):
    """The checkpoint does not fit the model, or is not a readable PyTorch file."""


# ---- Reading a torch.save file safely ---------------------------------------------------


class _Opaque:
    """Stands in for a pickled object whose class is not on the allow-list.

    Unpickling it calls none of the original class's code: construction, state and
    items are accepted and dropped.
    """

    pickled_name = '?'

    def __new__(cls, *args: Any, **kwargs: Any):
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f'<not loaded: {self.pickled_name}>'


_opaque_classes: dict[str, type[_Opaque]] = {}


def _opaque_class(module: str, name: str) -> type[_Opaque]:
    key = f'{module}.{name}'
    if key not in _opaque_classes:
        _opaque_classes[key] = type('Opaque', (_Opaque,), {'pickled_name': key})
    return _opaque_classes[key]


class _StorageType:
    """What `torch.FloatStorage` etc. unpickle to in the numpy reader: just a dtype."""

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = dtype


def _bfloat16() -> np.dtype:
    import ml_dtypes  # a jax dependency

    return np.dtype(ml_dtypes.bfloat16)


_STORAGE_DTYPES = {
    'FloatStorage': np.float32,
    'DoubleStorage': np.float64,
    'HalfStorage': np.float16,
    'BFloat16Storage': None,  # resolved lazily (ml_dtypes)
    'LongStorage': np.int64,
    'IntStorage': np.int32,
    'ShortStorage': np.int16,
    'CharStorage': np.int8,
    'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


def _numpy_rebuild_tensor(
    storage: np.ndarray, offset: int, size: Any, stride: Any, *_: Any, **__: Any
) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2 for a numpy storage, bounds-checked (a crafted
    file must not make as_strided read outside the storage)."""
    if not isinstance(storage, np.ndarray):
        raise ConversionError(f'tensor on an unsupported storage ({storage!r})')
    size, stride = tuple(size), tuple(stride)
    ints = (offset, *size, *stride)
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in ints):
        raise ConversionError(
            f'invalid tensor geometry: offset {offset} size {size} stride {stride}'
        )
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise ConversionError(f'tensor (size {size}, stride {stride}) overruns its storage')
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride]
    )
    return np.array(view)  # own, contiguous memory


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data  # nn.Parameter -> its tensor


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if func not in _SAFE_CALLABLES:
        raise ConversionError('a tensor subclass rebuilt by an unknown function')
    return func(*args)  # the subclass (new_type) and its Python state are dropped


_SAFE_CALLABLES: set[Any] = {_numpy_rebuild_tensor}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a state_dict needs; everything else becomes _Opaque."""

    # The function that rebuilds a tensor from (storage, offset, size, stride, ...).
    tensor_rebuild: Any = staticmethod(_numpy_rebuild_tensor)

    def find_class(self, module: str, name: str) -> Any:
        allowed = {
            ('collections', 'OrderedDict'): collections.OrderedDict,
            ('torch._utils', '_rebuild_tensor_v2'): self.tensor_rebuild,
            ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
            ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
            ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module == 'torch' and name in _STORAGE_DTYPES:
            dtype = _STORAGE_DTYPES[name] or _bfloat16()
            return _StorageType(name, np.dtype(dtype))
        return _opaque_class(module, name)


class _ZipUnpickler(_RestrictedUnpickler):
    """Reads data.pkl of a zip-format torch.save file; storages come from data/<key>."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str):
        super().__init__(archive.open(prefix + 'data.pkl'))
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, np.ndarray] = {}
        byteorder = prefix + 'byteorder'
        big = byteorder in archive.namelist() and archive.read(byteorder).strip() == b'big'
        self._byteorder = '>' if big else '<'

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'):
            raise ConversionError(f'unsupported persistent id in the checkpoint: {pid!r}')
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise ConversionError(f'unsupported tensor storage type {storage_type!r}')
        if key not in self._storages:
            dtype = storage_type.dtype.newbyteorder(self._byteorder)
            try:
                raw = self._archive.read(f'{self._prefix}data/{key}')
            except KeyError:
                raise ConversionError(f'storage {key!r} missing from the archive') from None
            if len(raw) != numel * dtype.itemsize:
                raise ConversionError(f'storage {key!r}: {len(raw)} bytes for {numel} values')
            self._storages[key] = np.frombuffer(raw, dtype).astype(dtype.newbyteorder('='))
        return self._storages[key]


def _zip_prefix(archive: zipfile.ZipFile) -> str:
    pickles = [n for n in archive.namelist() if n.endswith('data.pkl') and n.count('/') == 1]
    if len(pickles) != 1:
        raise ConversionError(
            'not a PyTorch checkpoint (a zip archive without a single <name>/data.pkl)'
        )
    return pickles[0][: -len('data.pkl')]


def _legacy_pickle_module() -> types.ModuleType:
    """A pickle module for torch.load on legacy files: torch's own storage handling,
    our allow-list for everything else (torch's loader subclasses our Unpickler)."""
    import torch._utils

    class Unpickler(_RestrictedUnpickler):
        tensor_rebuild = staticmethod(torch._utils._rebuild_tensor_v2)

    _SAFE_CALLABLES.add(torch._utils._rebuild_tensor_v2)
    module = types.ModuleType('former_dfer_restricted_pickle')
    module.Unpickler = Unpickler
    module.load = lambda f, **kwargs: Unpickler(f, **kwargs).load()
    return module


def _to_numpy(tree: Any) -> Any:
    """torch tensors (legacy path) -> numpy arrays, containers kept."""
    if isinstance(tree, Mapping):
        return collections.OrderedDict((k, _to_numpy(v)) for k, v in tree.items())
    if type(tree).__module__ == 'torch' and type(tree).__name__ == 'Tensor':
        return tree.detach().cpu().numpy()
    return tree


# What a legacy (pre-1.6) torch.save file pickles first (torch.serialization.MAGIC_NUMBER).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def load_torch_file(path: str) -> Any:
    """The object stored by `torch.save` at `path`, tensors as numpy arrays.

    Never executes code from the file; objects of other classes come back as inert
    placeholders. Any file that does not read as a checkpoint is a ConversionError
    naming it.
    """
    if not os.path.isfile(path):
        raise ConversionError(f'{path}: no such file')
    try:
        return _load_torch_file(path)
    except ConversionError as e:
        raise ConversionError(f'{path}: {e}') from None
    except Exception as e:  # whatever a damaged or foreign file makes the readers raise
        raise ConversionError(
            f'{path}: not a PyTorch checkpoint, or a damaged one ({type(e).__name__}: {e})'
        ) from e


def _is_legacy_torch_file(path: str) -> bool:
    with open(path, 'rb') as f:
        try:
            return _RestrictedUnpickler(f).load() == _LEGACY_MAGIC
        except Exception:  # not a pickle at all
            return False


def _load_torch_file(path: str) -> Any:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return _ZipUnpickler(archive, _zip_prefix(archive)).load()
    if not _is_legacy_torch_file(path):
        raise ConversionError(
            'not a PyTorch checkpoint (neither a torch.save zip archive nor the legacy '
            'torch.save format)'
        )
    try:
        import torch
    except ImportError:
        raise ConversionError(
            'in the legacy (pre-1.6) torch.save format, which needs PyTorch to '
            'read: pip install torch (zip-format checkpoints need only numpy)'
        ) from None
    # weights_only=False only because torch refuses a custom pickle_module otherwise:
    # the restricted module decides what may be loaded.
    obj = torch.load(
        path, map_location='cpu', weights_only=False, pickle_module=_legacy_pickle_module()
    )
    return _to_numpy(obj)


def extract_state_dict(checkpoint: Any) -> dict[str, np.ndarray]:
    """The state_dict of a reference checkpoint (its `state_dict` entry, or the object
    itself when it is a bare state_dict), without DataParallel's `module.` prefix."""
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f'expected a dict in the checkpoint, got {type(checkpoint)}')
    state_dict = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state_dict, Mapping):
        raise ConversionError(f"checkpoint['state_dict'] is a {type(state_dict)}, not a dict")
    out = {}
    for key, value in state_dict.items():
        name = key[len('module.') :] if key.startswith('module.') else key
        out[name] = value
    return out


# ---- Mapping the reference names onto the model -----------------------------------------

# Our module path (dotted) -> the reference code's attribute path, applied in order.
_ROOTS = (
    (r'^spatial\.trunk\.', 's_former.'),
    (r'^spatial\.s_former\.encoder\.', 's_former.spatial_transformer.'),
    (r'^spatial\.s_former\.pos_embedding$', 's_former.pos_embedding'),
    (r'^temporal\.encoder\.', 't_former.spatial_transformer.'),
    (r'^temporal\.(cls_token|pos_embedding)$', r't_former.\1'),
    (r'^classifier\.', 'fc.'),
)
_INNER = (
    # Encoder layer i = [Residual(PreNorm(Attention)), Residual(PreNorm(FeedForward))].
    (r'\.attn_norm\.', '.0.fn.norm.'),
    (r'\.attn\.qkv\.', '.0.fn.fn.to_qkv.'),
    (r'\.attn\.out\.', '.0.fn.fn.to_out.0.'),
    (r'\.mlp_norm\.', '.1.fn.norm.'),
    (r'\.mlp\.fc1\.', '.1.fn.fn.net.0.'),
    (r'\.mlp\.fc2\.', '.1.fn.fn.net.3.'),  # net = [Linear, GELU, Dropout, Linear, Dropout]
    (r'\.downsample\.conv\.', '.downsample.0.'),
    (r'\.downsample\.bn\.', '.downsample.1.'),
    (r'\.(kernel|scale)$', '.weight'),
    (r'\.mean$', '.running_mean'),
    (r'\.var$', '.running_var'),
)
_COUNTER = 'num_batches_tracked'


def _torch_key(path: tuple[Any, ...]) -> str | None:
    name = '.'.join(map(str, path))
    for pattern, replacement in _ROOTS:
        if re.search(pattern, name):
            name = re.sub(pattern, replacement, name)
            break
    else:
        return None
    for pattern, replacement in _INNER:
        name = re.sub(pattern, replacement, name)
    return name


def _weights(model: nnx.Module) -> dict[tuple[Any, ...], nnx.Variable]:
    """The model's parameters and BatchNorm statistics by path (not RNG state)."""
    return {
        path: variable
        for path, variable in nnx.to_flat_state(nnx.state(model))
        if isinstance(variable, nnx.Param | nnx.BatchStat)
    }


def reference_key_map(model: nnx.Module) -> dict[str, tuple[Any, ...]]:
    """Reference state_dict key -> path of the model's variable holding it.

    BatchNorm counters (`num_batches_tracked`) are not listed: they have no counterpart.
    Raises ConversionError for parts of the model the reference code does not have
    (e.g. the GRU / LSTM baselines).
    """
    mapping, unmapped = {}, []
    for path in _weights(model):
        key = _torch_key(path)
        if key is None:
            unmapped.append('.'.join(map(str, path)))
        else:
            mapping[key] = path
    if unmapped:
        raise ConversionError(
            'the model has parts with no counterpart in the reference code: ' + ', '.join(unmapped)
        )
    return mapping


def reference_keys(model: nnx.Module) -> list[str]:
    """Every key of the reference state_dict for `model`, BatchNorm counters included."""
    keys = list(reference_key_map(model))
    counters = [k[: -len('running_mean')] + _COUNTER for k in keys if k.endswith('running_mean')]
    return keys + counters


def _to_jax_layout(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == 'kernel' and value.ndim == 4:  # conv OIHW -> HWIO
        return value.transpose(2, 3, 1, 0)
    if leaf == 'kernel' and value.ndim == 2:  # linear [out, in] -> [in, out]
        return value.T
    return value


def _expected_torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if leaf == 'kernel' and len(shape) == 4:  # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf == 'kernel' and len(shape) == 2:  # [in, out] -> [out, in]
        return (shape[1], shape[0])
    return shape


def torch_state_dict_to_nnx_state(state_dict: Mapping[str, Any], model: nnx.Module) -> nnx.State:
    """The model's state with its parameters and BatchNorm statistics taken from a
    reference state_dict (or a whole reference checkpoint). `model` may be abstract
    (`nnx.eval_shape`): only shapes and dtypes are read, and it is not modified; apply
    the result with `nnx.update(model, state)` or `nnx.merge(graphdef, state)`.

    Every problem is reported in one ConversionError, each key by name: missing keys,
    unexpected keys, shapes that do not fit, values that are not arrays.
    """
    state_dict = extract_state_dict(state_dict)
    key_map = reference_key_map(model)
    flat = _weights(model)
    missing, unexpected, wrong = [], [], []
    new_values: dict[tuple[Any, ...], jax.Array] = {}
    for key in sorted(key_map.keys() - state_dict.keys()):
        missing.append(key)
    for key, value in state_dict.items():
        if key.endswith('.' + _COUNTER) and key[: -len(_COUNTER)] + 'running_mean' in key_map:
            if not (isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in 'iu'):
                wrong.append(f'{key}: expected an integer count, got {_describe(value)}')
            continue  # nnx keeps no counter: PyTorch uses it only when momentum is None
        if key not in key_map:
            unexpected.append(key)
            continue
        path = key_map[key]
        target = flat[path]
        expected = _expected_torch_shape(str(path[-1]), tuple(target.shape))
        if not isinstance(value, np.ndarray) or value.dtype.kind not in 'fiu':
            wrong.append(f'{key}: expected a float tensor {list(expected)}, got {_describe(value)}')
        elif value.shape != expected:
            wrong.append(
                f'{key}: shape {list(value.shape)} in the checkpoint, {list(expected)} expected'
            )
        else:
            converted = _to_jax_layout(str(path[-1]), value)
            new_values[path] = jax.numpy.asarray(converted, dtype=target.dtype)
    if missing or unexpected or wrong:
        lines = [f'missing key: {k}' for k in missing]
        lines += [f'unexpected key: {k}' for k in unexpected]
        lines += [f'mis-shaped: {w}' for w in wrong]
        raise ConversionError(
            f'the checkpoint does not fit the model ({len(lines)} problems; does the model '
            'config match the checkpoint, e.g. model.spatial.depth, model.image_size?):\n  '
            + '\n  '.join(lines)
        )
    return nnx.from_flat_state(
        [
            (path, variable.replace(new_values[path]) if path in new_values else variable)
            for path, variable in nnx.to_flat_state(nnx.state(model))
        ]
    )


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f'{value.dtype} array {list(value.shape)}'
    return repr(value) if isinstance(value, _Opaque) else type(value).__name__


def convert_checkpoint(path: str, model_config: ml_collections.ConfigDict) -> FormerDFER:
    """The model of `model_config` (config.model) with the weights of the reference
    checkpoint at `path`, in eval mode."""
    return _convert(load_torch_file(path), model_config)


def _convert(checkpoint: Any, model_config: ml_collections.ConfigDict) -> FormerDFER:
    # Built abstractly: every weight comes from the checkpoint, so a random init (one
    # XLA compilation per weight shape) would be wasted.
    abstract = build_abstract_model(model_config)
    graphdef, _ = nnx.split(abstract)
    state = torch_state_dict_to_nnx_state(checkpoint, abstract)
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state)):
        # Variables without a counterpart (dropout RNG state) need a real init.
        model = build_model(model_config, rngs=nnx.Rngs(0))
        nnx.update(model, state)
    else:
        model = nnx.merge(graphdef, state)
    model.eval()
    return model


# ---- Command line ------------------------------------------------------------------------


def _checkpoint_meta(checkpoint: Any, path: str) -> dict[str, Any]:
    """JSON-safe scalars of the reference checkpoint (epoch, best_acc) for the record."""
    meta: dict[str, Any] = {'converted_from': os.path.abspath(path)}
    if isinstance(checkpoint, Mapping):
        for key in ('epoch', 'best_acc'):
            value = checkpoint.get(key)
            if isinstance(value, np.ndarray) and value.size == 1:
                value = value.item()
            if isinstance(value, int | float):
                meta[f'torch_{key}'] = value
    return meta


def convert_and_save(
    checkpoint_path: str, output: str, config: ml_collections.ConfigDict
) -> FormerDFER:
    """Converts the reference checkpoint and writes it as a run directory at `output`
    (config.json + checkpoint), which `inference.open_run(output)` opens."""
    from former_dfer_jax.training import checkpointing

    checkpoint = load_torch_file(checkpoint_path)
    model = _convert(checkpoint, config.model)
    checkpointing.save_model(
        output, model, config, meta=_checkpoint_meta(checkpoint, checkpoint_path)
    )
    return model


def main(argv: list[str]) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    FLAGS = flags.FLAGS
    config_checks.validate(FLAGS.config)
    try:
        model = convert_and_save(FLAGS.checkpoint, FLAGS.output, FLAGS.config)
    except ConversionError as e:
        if str(e).startswith(FLAGS.checkpoint):
            raise
        raise ConversionError(f'{FLAGS.checkpoint}: {e}') from e
    count = len(reference_keys(model))
    print(f'{FLAGS.checkpoint}: {count} entries imported; run directory: {FLAGS.output}')


def _define_flags() -> None:
    from absl import flags

    cli.define_config_flags(reference_default=True)
    flags.DEFINE_string('checkpoint', None, 'A .pth file saved by the reference code.')
    flags.DEFINE_string('output', None, 'Run directory to write (inference.open_run reads it).')
    flags.mark_flags_as_required(['checkpoint', 'output'])


def entry_point() -> None:
    """The `former-dfer-convert-torch` command (also `python -m former_dfer_jax.convert_torch`)."""
    _define_flags()
    cli.run(main)


if __name__ == '__main__':
    entry_point()
