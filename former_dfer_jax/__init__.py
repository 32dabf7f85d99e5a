"""Former-DFER (ACM MM 2021) in JAX / Flax NNX.

Public API (docs/api.md):

    from flax import nnx
    from former_dfer_jax.models import FormerDFER, ModelSpec
    model = FormerDFER(ModelSpec(num_classes=11), rngs=nnx.Rngs(0))

    from former_dfer_jax.inference import open_run
    run = open_run('runs/dfew_fd1')     # eval-mode model, config, class names, sampling

Layers, bottom to top (a module imports only from its own layer or below):
  errors, files, run_lock, xla_flags,        shared leaves
  default_config
  models/                                    the Flax modules
  video/                                     face pipeline: decode, detect, track, align
  data/                                      datasets -> prepared cache -> tf.data
  training/                                  steps, the loop, checkpoints, evaluation
  inference/                                 opening runs, predicting videos, explaining
  main, evaluate, cross_validate, predict,   thin command lines (with cli and ablations);
  explain, convert_torch, benchmark, flops   data.prepare, data.extract_faces and
                                             data.synthetic are commands too
"""

__version__ = '0.1.0'
