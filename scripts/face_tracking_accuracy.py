"""Face pipeline on a 640x360 30 fps moving-face video (tests/videos.py): IoU of
detect_every k in {1, 2, 4, 8} against the true boxes and against k=1, and frames/s.

PYTHONPATH=. .venv/bin/python scripts/face_tracking_accuracy.py [frames] [speed] [wobble]
"""

import os
import sys
import tempfile
import time

import numpy as np

from former_dfer_jax import video
from tests import videos

n = int(sys.argv[1]) if len(sys.argv) > 1 else 90
speed = float(sys.argv[2]) if len(sys.argv) > 2 else 6.0
wobble = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
frames, true = videos.moving_face_frames(
    n, size=(640, 360), face_size=100, seed=3, speed=speed, wobble=wobble
)
path = videos.write_video(
    os.path.join(tempfile.mkdtemp(), f'moving_{speed}_{wobble}.mp4'), frames, fps=30
)
del frames
print(
    f'{n} frames 640x360 30 fps h264, face 100 px, {speed} px/frame, '
    f'wobble {wobble} px (period 16 frames); '
    f'{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}'
)
t = time.perf_counter()
m = sum(1 for _ in video.read_frames(path))
dt = time.perf_counter() - t
print(f'decode (one pass, RGB): {m / dt:.0f} frames/s')
det = video.MtcnnDetector()
det.detect(np.zeros((360, 640, 3), np.uint8))  # warm-up (TensorFlow start)
ref = None
for k, smooth in [(1, 1), (1, 5), (2, 5), (4, 5), (8, 5)]:
    fv = video.extract_face_video(
        path, video.FaceOptions(detect_every=k, smooth=smooth), detector=det
    )
    boxes = [f['face']['box'] if f['face'] else None for f in fv.frames]
    iou_true = [videos.box_iou(b, t) if b else 0.0 for b, t in zip(boxes, true, strict=True)]
    if (k, smooth) == (1, 5):
        ref = boxes
    vs_ref = ''
    if ref is not None:
        pairs = zip(boxes, ref, strict=True)
        iou_ref = [videos.box_iou(b, r) if b and r else 0.0 for b, r in pairs]
        vs_ref = f', vs k=1 {np.mean(iou_ref):.3f} (min {np.min(iou_ref):.3f})'
    print(
        f'k={k} smooth={smooth}: IoU vs true {np.mean(iou_true):.3f} '
        f'(min {np.min(iou_true):.3f}){vs_ref}; '
        f'crops {len(fv.crops)}/{n}; frames/s {fv.rates()}'
    )
