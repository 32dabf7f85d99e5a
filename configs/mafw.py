"""MAFW: its 11 single-expression classes, one of its 5 folds, the reference recipe.

    python -m former_dfer_jax.main --config=configs/mafw.py --workdir=runs/mafw_fd1 \
        --config.data.root=/data/MAFW --config.data.fold=1

MAFW's data/frames/<clip>/ are whole frames, so by default every clip's face is detected,
aligned and cropped once when the data is prepared (cached under the cache dir). To use
faces cropped beforehand instead (`python -m former_dfer_jax.data.extract_faces
--input=/data/MAFW/data/clips --output=/data/MAFW_faces`), add
`--config.data.frames_root=/data/MAFW_faces --config.data.face_crop=none`.
"""

import ml_collections

from former_dfer_jax import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config.get_config()
    config.data.name = 'mafw'
    config.data.fold = 1  # MAFW's single-label split has 5 folds, 1..5
    config.data.face_crop = 'detect'
    config.model.num_classes = 11  # the classifier follows the data (config_checks checks)
    return config
