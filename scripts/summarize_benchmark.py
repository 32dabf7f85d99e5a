"""Markdown tables and the issue's ratios from the JSON lines of scripts/gpu_benchmark.sh.

    python scripts/summarize_benchmark.py gpu_benchmark/results.jsonl [--skipped=FILE]

Rows without 'model' are ours (`python -m former_dfer_jax.benchmark`); the reference's have
model='reference-pytorch' (scripts/torch_reference_benchmark.py).
"""

from __future__ import annotations

import json
import os

from absl import app, flags

GIB = 1 << 30
# The GPU targets (H100 / H200): bf16 train throughput at batch 32 against the
# reference's float32 and autocast train throughput at batch 32, and the best MFU.
TARGETS = {'vs_reference_float32': 2.0, 'vs_reference_autocast': 1.3, 'mfu': 0.35}


def _gib(value) -> str:
    return f'{value / GIB:.2f}' if value else '-'


def _num(value, fmt: str) -> str:
    return format(value, fmt) if value is not None else '-'


def summarize(rows: list[dict], skipped: list[str]) -> str:
    ours = [r for r in rows if r.get('model') != 'reference-pytorch']
    reference = [r for r in rows if r.get('model') == 'reference-pytorch']
    lines = []
    devices = sorted({str(r.get('device')) for r in rows})
    lines.append(f'Device: {", ".join(devices) or "-"}')
    lines.append('')
    lines.append(
        '| ours | dtype | batch | clips/s | step ms | compile s | step memory GiB '
        '| peak device GiB | TFLOP/s | MFU |'
    )
    lines.append('|---|---|---|---|---|---|---|---|---|---|')
    for r in ours:
        achieved = r.get('achieved_gflops_per_s')
        lines.append(
            f'| {r["what"]} | {r["compute_dtype"]} | {r["batch_size"]} '
            f'| {r["clips_per_s"]:.1f} | {1e3 * r["step_s_median"]:.1f} '
            f'| {r["compile_s"]:.1f} | {_gib(r.get("step_memory_bytes"))} '
            f'| {_gib(r.get("peak_device_bytes"))} '
            f'| {_num(achieved / 1e3 if achieved else None, ".1f")} '
            f'| {_num(r.get("mfu"), ".1%")} |'
        )
    if reference:
        lines.append('')
        lines.append(
            '| reference PyTorch | precision | batch | clips/s | step ms | peak device GiB |'
        )
        lines.append('|---|---|---|---|---|---|')
        for r in reference:
            lines.append(
                f'| {r["what"]} | {r["precision"]} | {r["batch_size"]} '
                f'| {r["clips_per_s"]:.1f} | {1e3 * r["step_s_median"]:.1f} '
                f'| {_gib(r.get("peak_device_bytes"))} |'
            )
    lines.append('')

    def find(rows, **keys):
        return next((r for r in rows if all(r.get(k) == v for k, v in keys.items())), None)

    ours_bf16 = find(ours, what='train', compute_dtype='bfloat16', batch_size=32)
    for precision, target_key in (
        ('float32', 'vs_reference_float32'),
        ('autocast', 'vs_reference_autocast'),
    ):
        ref = find(reference, what='train', precision=precision, batch_size=32)
        if ours_bf16 and ref:
            ratio = ours_bf16['clips_per_s'] / ref['clips_per_s']
            target = TARGETS[target_key]
            verdict = 'met' if ratio >= target else f'missed by {target - ratio:.2f}'
            lines.append(
                f'- ours bfloat16 train / reference {precision} train, batch 32: '
                f'**{ratio:.2f}x** (target >= {target}x: {verdict})'
            )
    with_mfu = [r for r in ours if r.get('mfu') is not None]
    if with_mfu:
        best = max(with_mfu, key=lambda r: r['mfu'])
        verdict = 'met' if best['mfu'] >= TARGETS['mfu'] else 'missed'
        lines.append(
            f'- best MFU: **{best["mfu"]:.1%}** ({best["what"]}, {best["compute_dtype"]}, '
            f'batch {best["batch_size"]}; target >= {TARGETS["mfu"]:.0%}: {verdict})'
        )
    for item in skipped:
        lines.append(f'- skipped: {item}')
    return '\n'.join(lines) + '\n'


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise app.UsageError('usage: summarize_benchmark.py RESULTS.jsonl [--skipped=FILE]')
    with open(argv[1]) as f:
        rows = [json.loads(line) for line in f if line.startswith('{')]
    skipped = []
    if flags.FLAGS.skipped and os.path.exists(flags.FLAGS.skipped):
        with open(flags.FLAGS.skipped) as f:
            skipped = [line.strip() for line in f if line.strip()]
    print(summarize(rows, skipped), end='')


def _define_flags() -> None:
    flags.DEFINE_string('skipped', '', 'File listing skipped sections, one a line.')


if __name__ == '__main__':
    _define_flags()
    app.run(main)
