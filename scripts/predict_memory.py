"""Peak memory (RSS) of predict against the video's length.

    python scripts/predict_memory.py --seconds 30 300 --size 176x144
    python scripts/predict_memory.py --seconds 30 --package_root /tmp/head   # another copy

For each length, writes a synthetic face video (`benchmark.synthetic_face_video`: the
astronaut moving over a textured canvas, H.264) of that size, then predicts it in a fresh
Python process (the package imported from `--package_root`, default this checkout) with
the reference Former-DFER at 112 x 112 (`default_config`, random weights: the memory in
question is the face crops', not the weights'), predict's default detection and window
settings, and writes its files (prediction.json, timeline.png, faces.png; annotated.mp4
with --annotate). Prints one JSON line per length: the child's peak RSS after warm-up
(detector and model built and compiled) and at the end (`ru_maxrss`), in MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in the child, with the package of --package_root first on sys.path.
CHILD = """
import json, resource, sys
from flax import nnx
from former_dfer_jax import default_config
from former_dfer_jax.inference import predictor as predicting, prediction_plots
from former_dfer_jax.models import build_model

video, out, annotate = sys.argv[1], sys.argv[2], sys.argv[3] == '1'
def peak_mib():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
config = default_config.get_config()
model = build_model(config.model, rngs=nnx.Rngs(0))
model.eval()
sampling = (int(config.data.num_segments), int(config.data.segment_length))
predictor = predicting.Predictor(model, sampling=sampling)
predictor.warm_up()
warm = peak_mib()
prediction = predictor.predict(video)
prediction_plots.write_prediction(prediction, out, annotate=annotate)
print(json.dumps({
    'num_frames': prediction.result['num_frames'],
    'windows': len(prediction.result['windows']),
    'peak_rss_after_warm_up_mib': warm,
    'peak_rss_mib': peak_mib(),
}))
"""


def measure(seconds: float, size: tuple[int, int], fps: int, root: str, annotate: bool) -> dict:
    """Writes the video, predicts it in a child process; the child's figures."""
    sys.path.insert(0, ROOT)
    from former_dfer_jax.benchmark import synthetic_face_video

    with tempfile.TemporaryDirectory() as tmp:
        video = os.path.join(tmp, 'face.mp4')
        synthetic_face_video(video, seconds=seconds, fps=fps, size=size)
        env = dict(os.environ, PYTHONPATH=os.path.abspath(root), JAX_PLATFORMS='cpu')
        done = subprocess.run(
            [sys.executable, '-c', CHILD, video, os.path.join(tmp, 'out'), str(int(annotate))],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {'seconds': seconds, 'size': f'{size[0]}x{size[1]}', 'fps': fps, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seconds', type=float, nargs='+', default=[30.0, 300.0])
    parser.add_argument('--size', default='176x144', help='W x H of the video')
    parser.add_argument('--fps', type=int, default=25)
    parser.add_argument('--package_root', default=ROOT, help='folder holding former_dfer_jax')
    parser.add_argument('--annotate', action='store_true', help='also write annotated.mp4')
    args = parser.parse_args()
    w, h = (int(n) for n in args.size.lower().split('x'))
    for seconds in args.seconds:
        print(json.dumps(measure(seconds, (w, h), args.fps, args.package_root, args.annotate)))


if __name__ == '__main__':
    main()
