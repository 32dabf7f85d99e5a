"""The reference recipe: Former-DFER as the authors' code trains it on DFEW.

Every config file starts from this one (`configs/*.py` in the repository, or your own):

    from former_dfer_jax import default_config

    def get_config():
        config = default_config.get_config()
        config.data.root = '/data/DFEW'
        return config

Keys are documented where they are set; docs/configs.md lists the ones users change most.
Runs stored before a key existed get it at its value here (`checkpointing.read_config`).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    # ---- Data ---------------------------------------------------------------------
    config.data = data = ml_collections.ConfigDict()
    data.name = 'dfew'  # dfew | afew | ferv39k | mafw | own | synthetic (data/README.md)
    data.root = ''  # the raw dataset root as its owners distribute it
    data.fold = 1  # DFEW fold, 1..5
    data.cache_dir = ''  # where prepared (TFDS) data goes; '' = ~/.cache/former_dfer_jax
    # Reference-code annotation lists ('<clip dir> <num_frames> <label 0..6>') instead of
    # the dataset's own split files; the lists' absolute prefix is rewritten to data.root.
    data.annotation_dir = ''
    data.annotation_prefix = ''
    # Where the clip folders are when not where the dataset keeps them (MAFW only: its
    # <root>/data/frames), e.g. faces cropped by `python -m former_dfer_jax.data.extract_faces`.
    data.frames_root = ''
    # 'none': the frames are face crops already (DFEW, AFEW, FERV39k, extract_faces output).
    # 'detect': find, align and crop the face of every frame once at prepare time (whole
    # frames, e.g. MAFW's data/frames); the crops are cached under <cache dir>/faces.
    data.face_crop = 'none'
    # Frames are stored with their shorter side resized to this at prepare time (never
    # enlarged); 0 keeps the files as they are. 112 feeds the train pipeline ~4x faster
    # than the reference's loader on 2 cores (2.8x faster than keeping 256x256 originals);
    # 0 gives the reference's exact crops. See data/README.md, "Throughput".
    data.stored_frame_size = 112
    image_size = ml_collections.FieldReference(112)
    data.image_size = image_size  # frames fed to the model are image_size x image_size
    num_segments = ml_collections.FieldReference(8)
    segment_length = ml_collections.FieldReference(2)
    data.num_segments = num_segments  # U: segments a clip is split into
    data.segment_length = segment_length  # V: consecutive frames taken per segment
    # Fraction of the training fold held out (stratified) as a validation split to
    # select the best epoch on. 0 = the reference protocol (select on test).
    data.val_fraction = 0.0
    # Smallest random-resized-crop area (fraction of the frame) in training; the
    # reference's is 0.08.
    data.crop_area_min = 0.08
    data.num_parallel_calls = -1  # -1 = tf.data.AUTOTUNE
    data.prefetch = 2

    # ---- Model --------------------------------------------------------------------
    config.model = model = ml_collections.ConfigDict()
    model.num_classes = 7  # the data's class count: 7, mafw 11, own: lines of classes.txt
    model.image_size = image_size
    model.num_frames = num_segments * segment_length
    model.resnet_depth = 18  # 18 | 34 (BasicBlock trunks)
    model.compute_dtype = 'float32'  # 'bfloat16' on GPUs: params and BN stats stay f32

    model.spatial = spatial = ml_collections.ConfigDict()
    spatial.enabled = True  # False: ResNet-18 alone per frame (no S-Former)
    spatial.stage = 'layer3'  # 'layer3' (conv4 map) | 'layer4' (after conv5)
    spatial.depth = 1  # N. The authors' code uses 1; the paper's text says 3.
    spatial.num_heads = 8
    spatial.head_dim = 32
    spatial.mlp_dim = 512
    spatial.position_embedding = True
    spatial.dropout = 0.0

    model.temporal = temporal = ml_collections.ConfigDict()
    temporal.kind = 'transformer'  # transformer | gru | lstm
    temporal.depth = 3  # M
    temporal.num_heads = 8
    temporal.head_dim = 64
    temporal.mlp_dim = 1024
    temporal.position_embedding = True
    temporal.pooling = 'class_token'  # class_token | mean (of the frame tokens)
    temporal.rnn_hidden_size = 512  # for gru | lstm
    temporal.dropout = 0.0

    # ---- Optimisation (torch SGD semantics: coupled weight decay on every param) ----
    config.batch_size = 32  # global, over all devices and hosts
    config.eval_batch_size = 64
    config.num_epochs = 100
    config.optimizer = opt = ml_collections.ConfigDict()
    opt.name = 'sgd'  # sgd (the reference) | adamw (decoupled decay; momentum unused)
    opt.learning_rate = 0.01
    opt.momentum = 0.9
    opt.weight_decay = 1e-4
    opt.lr_decay_every_epochs = 40  # StepLR(step_size=40, gamma=0.1)
    opt.lr_decay_factor = 0.1

    # ---- Fine-tuning -----------------------------------------------------------------
    config.init_from = ''  # checkpoint (ours or converted from PyTorch) to start from
    config.reinit_classifier = False  # fresh head, e.g. when the class count differs

    # ---- Checkpoints, evaluation, logging ----------------------------------------------
    config.checkpoint = ckpt = ml_collections.ConfigDict()
    ckpt.keep_latest = 3
    ckpt.best_metric = 'war'  # war | uar: which eval metric picks the best checkpoint
    ckpt.every_steps = 0  # also save mid-epoch every N steps (0 = only at epoch ends)
    config.log_every_steps = 50
    config.eval_every_epochs = 1
    return config
