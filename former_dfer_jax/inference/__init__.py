"""Using trained models: open a stored run, run a jitted model over any number of clips.

    from former_dfer_jax.inference import open_run
    run = open_run('runs/dfew_fd1')       # eval-mode model, config, class names, sampling
    probabilities = run.predict(clips)    # clips: [B, 16, 112, 112, 3] in [0, 1]

Modules: runs (`open_run`: the one way to load a run), batches (a jitted function over
padded fixed-size batches), predictor (a video in, emotions over time out),
prediction_plots (its timeline, contact sheet and annotated video), explanations
(Grad-CAM, feature maps, attention, occlusion: pure and jit-able), explanation_plots
(t-SNE, projector export, heatmap strips). Import those modules by name: they load the
face detector and plotting libraries, which `open_run` does not need.
"""

from former_dfer_jax.inference.batches import run_batched
from former_dfer_jax.inference.runs import Run, class_names_of, default_class_names, open_run

__all__ = ['Run', 'class_names_of', 'default_class_names', 'open_run', 'run_batched']
