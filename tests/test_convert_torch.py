"""The PyTorch checkpoint importer: safe loading, key mapping, and logit parity.

The PyTorch model here is written for the test (not the authors' code) with the module
names that give the reference code's state_dict keys, as FORMER_DFER.md lists them.
"""

from __future__ import annotations

import collections
import functools
import math
import os
import pickle
import re
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from former_dfer_jax import convert_torch, default_config, inference
from former_dfer_jax.convert_torch import ConversionError
from former_dfer_jax.models import build_model
from former_dfer_jax.training import checkpointing

# Only the PyTorch model built here as the oracle needs torch (requirements-dev.txt); the
# converter itself reads zip-format files without it.
torch = pytest.importorskip('torch', reason='the PyTorch parity oracle needs torch')
tnn = torch.nn
F = torch.nn.functional
torch.set_num_threads(2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- A PyTorch Former-DFER with the reference's module names --------------------------


class _Residual(tnn.Module):  # the reference's Residual: its child is named `fn`
    def __init__(self, fn: tnn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return x + self.fn(x)


class _PreNorm(tnn.Module):
    def __init__(self, dim: int, fn: tnn.Module):
        super().__init__()
        self.norm = tnn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class _SelfAttention(tnn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.to_qkv = tnn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = tnn.Sequential(tnn.Linear(heads * dim_head, dim), tnn.Dropout(0.0))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (
            t.reshape(b, n, self.heads, self.dim_head).transpose(1, 2)
            for t in self.to_qkv(x).chunk(3, dim=-1)
        )
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.dim_head), dim=-1)
        return self.to_out((attn @ v).transpose(1, 2).reshape(b, n, -1))


class _FeedForward(tnn.Module):
    def __init__(self, dim: int, mlp: int):
        super().__init__()
        self.net = tnn.Sequential(
            tnn.Linear(dim, mlp),
            tnn.GELU(approximate='tanh'),
            tnn.Dropout(0.0),
            tnn.Linear(mlp, dim),
            tnn.Dropout(0.0),
        )

    def forward(self, x):
        return self.net(x)


class _Encoder(tnn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp: int):
        super().__init__()
        self.layers = tnn.ModuleList(
            tnn.ModuleList(
                [
                    _Residual(_PreNorm(dim, _SelfAttention(dim, heads, dim_head))),
                    _Residual(_PreNorm(dim, _FeedForward(dim, mlp))),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x):
        for attention, feed_forward in self.layers:
            x = feed_forward(attention(x))
        return x


class _Block(tnn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = tnn.Sequential(
                tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _SFormer(tnn.Module):
    def __init__(self, num_patches: int, depth: int):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        widths = (64, 64, 128, 256, 512)
        for i in range(4):
            cin, cout, stride = widths[i], widths[i + 1], 1 if i == 0 else 2
            blocks = tnn.Sequential(_Block(cin, cout, stride), _Block(cout, cout, 1))
            setattr(self, f'layer{i + 1}', blocks)
        self.pos_embedding = tnn.Parameter(torch.randn(1, num_patches, 256))
        self.spatial_transformer = _Encoder(256, depth, 8, 32, 512)

    def forward(self, frames):  # [N, 3, H, W]
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(frames))), 3, 2, 1)
        x = self.layer3(self.layer2(self.layer1(x)))
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2) + self.pos_embedding
        x = self.spatial_transformer(tokens).transpose(1, 2).reshape(n, c, h, w)
        return self.layer4(x).mean(dim=(2, 3))


class _TFormer(tnn.Module):
    def __init__(self, num_frames: int, depth: int):
        super().__init__()
        self.cls_token = tnn.Parameter(torch.randn(1, 1, 512))
        self.pos_embedding = tnn.Parameter(torch.randn(1, num_frames + 1, 512))
        self.spatial_transformer = _Encoder(512, depth, 8, 64, 1024)

    def forward(self, x):  # [B, T, 512]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.spatial_transformer(x + self.pos_embedding)[:, 0]


class TorchFormerDFER(tnn.Module):
    def __init__(self, num_patches: int, num_frames: int, s_depth: int = 1, t_depth: int = 3):
        super().__init__()
        self.s_former = _SFormer(num_patches, s_depth)
        self.t_former = _TFormer(num_frames, t_depth)
        self.fc = tnn.Linear(512, 7)

    def forward(self, clips):  # [B, T, 3, H, W]
        b, t = clips.shape[:2]
        features = self.s_former(clips.flatten(0, 1)).reshape(b, t, 512)
        return self.fc(self.t_former(features))


class RecorderMeter:
    """Plays the training script's class: loading it for real would raise."""

    def __init__(self):
        self.epoch_accuracy = np.zeros((100, 2), np.float32)
        self.note = 'training curves'

    def __setstate__(self, state):
        raise AssertionError('the recorder was unpickled')


def make_torch_model(num_patches, num_frames, s_depth=1, t_depth=3, seed=0) -> TorchFormerDFER:
    """Random weights and non-trivial BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    model = TorchFormerDFER(num_patches, num_frames, s_depth, t_depth)
    for module in model.modules():
        if isinstance(module, tnn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n) * 0.2)
            module.running_var.copy_(torch.rand(n) + 0.5)
            module.weight.data.copy_(torch.rand(n) + 0.5)
            module.bias.data.copy_(torch.randn(n) * 0.2)
            module.num_batches_tracked.fill_(2920)
        elif isinstance(module, tnn.LayerNorm):
            module.weight.data.copy_(torch.rand(module.weight.shape) + 0.5)
            module.bias.data.copy_(torch.randn(module.bias.shape) * 0.1)
    return model.eval()


def save_like_reference(model: tnn.Module, path: str, **save_kwargs) -> None:
    """As main_DFEW.py saves: DataParallel keys, optimizer state, and the recorder."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates momentum buffers, as a real checkpoint has
    state_dict = collections.OrderedDict(('module.' + k, v) for k, v in model.state_dict().items())
    checkpoint = {
        'epoch': 37,
        'state_dict': state_dict,
        'best_acc': torch.tensor(66.21),
        'optimizer': optimizer.state_dict(),
        'recorder': RecorderMeter(),
    }
    torch.save(checkpoint, path, **save_kwargs)


def small_config(image_size: int = 48, num_frames: int = 4, s_depth: int = 1):
    config = default_config.get_config()
    config.model.image_size = image_size
    config.data.num_segments, config.data.segment_length = num_frames // 2, 2
    config.model.spatial.depth = s_depth
    return config


def to_nhwc(clips: torch.Tensor) -> jax.Array:
    return jnp.asarray(clips.numpy().transpose(0, 1, 3, 4, 2))


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, clips):
    return nnx.merge(graphdef, state)(clips)


def jax_logits(model, clips: jax.Array) -> np.ndarray:
    """Eval-mode logits; one compilation per architecture and input shape."""
    model.eval()
    return np.asarray(_forward(*nnx.split(model), clips))


# The reference state_dict keys as FORMER_DFER.md lists them, for depths (N, M).
def expected_reference_keys(s_depth: int = 1, t_depth: int = 3) -> set[str]:
    bn = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
    keys = {'s_former.conv1.weight', *(f's_former.bn1.{p}' for p in bn)}
    for stage in range(1, 5):
        for block in range(2):
            prefix = f's_former.layer{stage}.{block}'
            keys |= {f'{prefix}.conv1.weight', f'{prefix}.conv2.weight'}
            keys |= {f'{prefix}.bn{i}.{p}' for i in (1, 2) for p in bn}
        if stage > 1:
            keys.add(f's_former.layer{stage}.0.downsample.0.weight')
            keys |= {f's_former.layer{stage}.0.downsample.1.{p}' for p in bn}

    def encoder(prefix: str, depth: int) -> set[str]:
        out = set()
        for i in range(depth):
            p = f'{prefix}.spatial_transformer.layers.{i}'
            out |= {f'{p}.0.fn.norm.weight', f'{p}.0.fn.norm.bias', f'{p}.0.fn.fn.to_qkv.weight'}
            out |= {f'{p}.0.fn.fn.to_out.0.weight', f'{p}.0.fn.fn.to_out.0.bias'}
            out |= {f'{p}.1.fn.norm.weight', f'{p}.1.fn.norm.bias'}
            out |= {f'{p}.1.fn.fn.net.{j}.{w}' for j in (0, 3) for w in ('weight', 'bias')}
        return out

    keys |= {'s_former.pos_embedding', *encoder('s_former', s_depth)}
    keys |= {'t_former.cls_token', 't_former.pos_embedding', *encoder('t_former', t_depth)}
    return keys | {'fc.weight', 'fc.bias'}


@pytest.fixture(scope='module')
def default_abstract_model():
    return nnx.eval_shape(lambda: build_model(default_config.get_config().model, rngs=nnx.Rngs(0)))


# ---- Key mapping ---------------------------------------------------------------------------


def test_reference_keys_of_the_default_model_are_the_169_of_the_reference(
    default_abstract_model,
):
    keys = convert_torch.reference_keys(default_abstract_model)
    expected = expected_reference_keys()
    assert len(keys) == len(set(keys)) == 169
    assert set(keys) == expected
    learnable = [k for k in keys if 'running_' not in k and 'num_batches' not in k]
    assert len(learnable) == 109
    # ... and the test's PyTorch model has exactly those names (same architecture).
    torch_keys = TorchFormerDFER(49, 16).state_dict().keys()
    assert set(torch_keys) == expected


def test_reference_keys_follow_the_depths():
    config = small_config(s_depth=3)
    config.model.temporal.depth = 2
    model = nnx.eval_shape(lambda: build_model(config.model, rngs=nnx.Rngs(0)))
    assert set(convert_torch.reference_keys(model)) == expected_reference_keys(3, 2)


def test_models_without_a_reference_counterpart_are_refused():
    config = small_config()
    config.model.temporal.kind = 'gru'
    model = nnx.eval_shape(lambda: build_model(config.model, rngs=nnx.Rngs(0)))
    with pytest.raises(ConversionError, match=r'temporal\.input_kernel'):
        convert_torch.reference_key_map(model)


# ---- Parity ------------------------------------------------------------------------------


# 48x48 frames: layer3 map 3x3 (9 tokens), layer4 map 2x2; S-Former depth 2, 4 frames.
SMALL = dict(image_size=48, num_frames=4, s_depth=2)
SMALL_TOKENS = 9


def small_clips(seed: int) -> torch.Tensor:
    return torch.rand(2, 4, 3, 48, 48, generator=torch.Generator().manual_seed(seed))


def test_converted_checkpoint_reproduces_torch_logits(tmp_path):
    torch_model = make_torch_model(SMALL_TOKENS, 4, s_depth=2)
    clips = small_clips(1)
    with torch.no_grad():
        expected = torch_model(clips).numpy()
    assert np.abs(expected).max() > 0.1  # a real signal, not all zeros
    config = small_config(**SMALL)
    bare = torch_model.state_dict()
    saved = {
        # As main_DFEW.py saves it (DataParallel keys, optimizer, recorder) ...
        'reference_checkpoint': lambda path: save_like_reference(torch_model, path),
        # ... or a bare state_dict, with or without DataParallel's prefix.
        'bare_state_dict': lambda path: torch.save(bare, path),
        'prefixed_state_dict': lambda path: torch.save(
            collections.OrderedDict(('module.' + k, v) for k, v in bare.items()), path
        ),
    }
    for name, save in saved.items():
        path = str(tmp_path / f'{name}.pth')
        save(path)
        model = convert_torch.convert_checkpoint(path, config.model)
        got = jax_logits(model, to_nhwc(clips))
        # Measured max abs error 4.9e-6 (|logit| < 1.9; torch itself is 4.7e-7 from a
        # float64 run, ours 5.0e-6); 3e-5 is ~6x.
        np.testing.assert_allclose(got, expected, rtol=0, atol=3e-5, err_msg=name)


def test_converted_checkpoint_reproduces_torch_logits_at_112px(tmp_path):
    torch_model = make_torch_model(49, 16, seed=3)
    path = str(tmp_path / 'checkpoint.pth')
    save_like_reference(torch_model, path)
    model = convert_torch.convert_checkpoint(path, default_config.get_config().model)
    clips = torch.rand(2, 16, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = torch_model(clips).numpy()
    # Measured max abs error 5.7e-7 (|logit| < 2.7); 3e-6 is ~5x.
    np.testing.assert_allclose(jax_logits(model, to_nhwc(clips)), expected, rtol=0, atol=3e-6)


def test_conversion_fills_every_variable_and_leaves_the_model_untouched():
    torch_model = make_torch_model(SMALL_TOKENS, 4, s_depth=2)
    model = nnx.eval_shape(lambda: build_model(small_config(**SMALL).model, rngs=nnx.Rngs(0)))

    state = convert_torch.torch_state_dict_to_nnx_state(
        {k: v.numpy() for k, v in torch_model.state_dict().items()}, model
    )

    leaves = jax.tree.leaves(nnx.state(model))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # still abstract
    converted = jax.tree.leaves(state)
    assert len(converted) == len(leaves) == 160
    assert all(isinstance(x, jax.Array) and x.dtype == jnp.float32 for x in converted)
    # Spot checks of the layouts: conv OIHW -> HWIO, linear [out, in] -> [in, out], BN.
    converted = nnx.to_pure_dict(state)
    sd = torch_model.state_dict()
    np.testing.assert_array_equal(
        converted['spatial']['trunk']['conv1']['kernel'],
        sd['s_former.conv1.weight'].numpy().transpose(2, 3, 1, 0),
    )
    qkv = converted['spatial']['s_former']['encoder']['layers'][1]['attn']['qkv']['kernel']
    np.testing.assert_array_equal(
        qkv, sd['s_former.spatial_transformer.layers.1.0.fn.fn.to_qkv.weight'].numpy().T
    )
    bn = converted['spatial']['trunk']['layer2'][0]['downsample']['bn']
    np.testing.assert_array_equal(
        bn['var'], sd['s_former.layer2.0.downsample.1.running_var'].numpy()
    )
    np.testing.assert_array_equal(
        converted['temporal']['encoder']['layers'][2]['mlp']['fc2']['bias'],
        sd['t_former.spatial_transformer.layers.2.1.fn.fn.net.3.bias'].numpy(),
    )


# ---- Safe loading ---------------------------------------------------------------------------


def test_the_recorder_is_never_unpickled(tmp_path):
    path = str(tmp_path / 'checkpoint.pth')
    save_like_reference(make_torch_model(9, 4), path)
    # The trap works: a full unpickling runs RecorderMeter.__setstate__.
    with pytest.raises(AssertionError, match='recorder was unpickled'):
        torch.load(path, weights_only=False)

    checkpoint = convert_torch.load_torch_file(path)

    assert isinstance(checkpoint['recorder'], convert_torch._Opaque)
    assert repr(checkpoint['recorder']).endswith('RecorderMeter>')
    assert checkpoint['epoch'] == 37
    assert len(checkpoint['state_dict']) == 169
    assert all(isinstance(v, np.ndarray) for v in checkpoint['state_dict'].values())


def test_legacy_format_is_read_safely_too(tmp_path):
    path = str(tmp_path / 'legacy.pth')
    torch_model = make_torch_model(9, 4)
    save_like_reference(torch_model, path, _use_new_zipfile_serialization=False)
    with pytest.raises(AssertionError, match='recorder was unpickled'):
        torch.load(path, weights_only=False)
    checkpoint = convert_torch.load_torch_file(path)
    assert isinstance(checkpoint['recorder'], convert_torch._Opaque)
    state_dict = convert_torch.extract_state_dict(checkpoint)
    reference = torch_model.state_dict()
    assert state_dict.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_array_equal(state_dict[key], value.numpy())


def test_torch_is_needed_only_for_the_legacy_format(tmp_path, monkeypatch):
    torch_model = make_torch_model(SMALL_TOKENS, 4)
    save_like_reference(torch_model, str(tmp_path / 'zip.pth'))
    save_like_reference(
        torch_model, str(tmp_path / 'legacy.pth'), _use_new_zipfile_serialization=False
    )
    monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now fails

    assert len(convert_torch.load_torch_file(str(tmp_path / 'zip.pth'))['state_dict']) == 169
    with pytest.raises(ConversionError, match=r'legacy .* needs PyTorch'):
        convert_torch.load_torch_file(str(tmp_path / 'legacy.pth'))
    with pytest.raises(ConversionError, match='no such file'):
        convert_torch.load_torch_file(str(tmp_path / 'absent.pth'))


def test_objects_of_unknown_classes_are_never_constructed(tmp_path):
    path = str(tmp_path / 'evil.pth')
    marker = tmp_path / 'pwned'
    # Unpickling this for real runs os.system('touch <marker>').
    torch.save({'state_dict': {}, 'payload': _Evil(str(marker))}, path)
    checkpoint = convert_torch.load_torch_file(path)
    assert isinstance(checkpoint['payload'], convert_torch._Opaque)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the trap works
    assert marker.exists()


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_tensor_geometry_outside_the_storage_is_refused():
    storage = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(
        convert_torch._numpy_rebuild_tensor(storage, 1, (2, 2), (2, 1)), [[1, 2], [3, 4]]
    )
    with pytest.raises(ConversionError, match='overruns'):
        convert_torch._numpy_rebuild_tensor(storage, 2, (2, 3), (3, 1))
    with pytest.raises(ConversionError, match='invalid tensor geometry'):
        convert_torch._numpy_rebuild_tensor(storage, 0, (2,), (-1,))


# ---- Errors --------------------------------------------------------------------------------


def test_every_missing_extra_and_misshaped_key_is_named():
    config = small_config()
    model = nnx.eval_shape(lambda: build_model(config.model, rngs=nnx.Rngs(0)))
    state_dict = {k: v.numpy() for k, v in make_torch_model(9, 4).state_dict().items()}
    del state_dict['fc.bias']
    del state_dict['s_former.layer3.1.bn2.running_var']
    state_dict['s_former.layer5.0.conv1.weight'] = np.zeros((1,), np.float32)
    state_dict['t_former.extra'] = np.zeros((1,), np.float32)
    state_dict['s_former.pos_embedding'] = np.zeros((1, 49, 256), np.float32)  # 112px
    state_dict['t_former.spatial_transformer.layers.2.0.fn.fn.to_qkv.weight'] = np.zeros(
        (1536, 256), np.float32
    )
    state_dict['s_former.bn1.num_batches_tracked'] = np.zeros((3,), np.float32)

    with pytest.raises(ConversionError) as error:
        convert_torch.torch_state_dict_to_nnx_state(state_dict, model)

    message = str(error.value)
    assert '7 problems' in message
    for line in [
        'missing key: fc.bias',
        'missing key: s_former.layer3.1.bn2.running_var',
        'unexpected key: s_former.layer5.0.conv1.weight',
        'unexpected key: t_former.extra',
        'mis-shaped: s_former.pos_embedding: shape [1, 49, 256] in the checkpoint, '
        '[1, 9, 256] expected',
        'mis-shaped: t_former.spatial_transformer.layers.2.0.fn.fn.to_qkv.weight: '
        'shape [1536, 256] in the checkpoint, [1536, 512] expected',
        'mis-shaped: s_former.bn1.num_batches_tracked: expected an integer count',
    ]:
        assert line in message


def test_num_batches_tracked_may_be_absent():
    config = small_config()
    model = nnx.eval_shape(lambda: build_model(config.model, rngs=nnx.Rngs(0)))
    state_dict = {
        k: v.numpy()
        for k, v in make_torch_model(9, 4).state_dict().items()
        if not k.endswith('num_batches_tracked')
    }
    assert len(state_dict) == 149
    state = convert_torch.torch_state_dict_to_nnx_state(state_dict, model)
    leaves = jax.tree.leaves(state)
    assert len(leaves) == 149 and all(isinstance(x, jax.Array) for x in leaves)


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    path = str(tmp_path / 'list.pth')
    torch.save([1, 2, 3], path)
    with pytest.raises(ConversionError, match='expected a dict'):
        convert_torch.extract_state_dict(convert_torch.load_torch_file(path))


@pytest.mark.parametrize(
    'content',
    [
        b'just text\n',
        pickle.dumps([1, 2, 3]),
        b'PK\x03\x04 truncated zip',
        'zip',
        pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2),  # a legacy file's magic, then nothing
    ],
    ids=['text', 'plain pickle', 'truncated zip', 'zip without data.pkl', 'truncated legacy'],
)
def test_a_file_that_is_not_a_pytorch_checkpoint_is_named(tmp_path, content):
    path = tmp_path / 'model.pth'
    if content == 'zip':
        with zipfile.ZipFile(path, 'w') as archive:
            archive.writestr('notes.txt', 'hello')
    else:
        path.write_bytes(content)
    with pytest.raises(
        ConversionError, match=rf'^{re.escape(str(path))}: not a PyTorch checkpoint'
    ):
        convert_torch.load_torch_file(str(path))


# ---- Command line --------------------------------------------------------------------------


def test_command_line_writes_a_run_directory_that_inference_loads(tmp_path):
    # No --config: the authors' checkpoints are of the reference architecture, which the
    # overrides below shrink the way an ablation's config would.
    torch_model = make_torch_model(SMALL_TOKENS, 4, s_depth=2, seed=7)
    checkpoint = str(tmp_path / 'checkpoint.pth')
    save_like_reference(torch_model, checkpoint)
    output = str(tmp_path / 'run')
    result = subprocess.run(
        [
            sys.executable, '-m', 'former_dfer_jax.convert_torch',
            f'--checkpoint={checkpoint}', f'--output={output}',
            '--config.model.image_size=48',
            '--config.data.num_segments=2', '--config.model.spatial.depth=2',
        ],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert '180 entries imported' in result.stdout  # 169 + one more S-Former layer

    model = inference.open_run(output, 'latest').model
    stored = checkpointing.read_config(output)
    assert stored.model.image_size == 48 and stored.model.spatial.depth == 2
    clips = small_clips(7)
    with torch.no_grad():
        expected = torch_model(clips).numpy()
    # Measured max abs error 3.4e-7 (|logit| < 1.1); 3e-6 is ~9x.
    np.testing.assert_allclose(jax_logits(model, to_nhwc(clips)), expected, rtol=0, atol=3e-6)


def test_a_mismatch_writes_nothing(tmp_path):
    checkpoint = str(tmp_path / 'checkpoint.pth')
    save_like_reference(make_torch_model(SMALL_TOKENS, 4), checkpoint)
    with pytest.raises(ConversionError, match=r'mis-shaped: s_former\.pos_embedding'):
        convert_torch.convert_and_save(
            checkpoint, str(tmp_path / 'run'), default_config.get_config()
        )
    assert not os.path.exists(tmp_path / 'run')
