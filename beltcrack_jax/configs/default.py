"""The reference BeltCrackDet recipe (UESTC-nnLab/BeltCrack @ 1e45cc3, `train_BeltCrackDet.py`).

Launch: `python train.py --config configs/default.py --workdir W [--config.batch_size=8 ...]`.
Every field below is read by exactly one part of the code; `model.num_frames` is the only place T is set
(the clip sampler, the network and the evaluator all read it).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 3047

    # ---- network (beltcrack_jax.models.build_model reads config.model) --------------------------------
    c.model = ml_collections.ConfigDict()
    c.model.num_frames = 5          # T: clip length, key frame last
    c.model.num_classes = 1
    c.model.depth = 0.33            # YOLOX-S CSP depth multiplier
    c.model.backbone_width = 0.50   # YOLOX-S width multiplier (P3 = 256 * 0.5 = 128 channels)
    c.model.width = 1.0             # extra multiplier on every channel count (backbone, neck, head): small CPU variants
    # Table 5 ablation switches. All on = the reference model.
    c.model.hsm = True              # spatial branch: gate + NAB + memory reader -> F_S
    c.model.atm = True              # temporal branch: TARFusion + GAL -> F_T
    c.model.wfm = True              # frequency branch: WTConv per frame, conv_fre_new, 3-D Swin, conv_t
    c.model.rcu = 3                 # residual compensation units used (0..3); 3 = reference
    c.model.swin_heads = 4          # 3-D Swin attention heads (reference 4; head dim = width*128 / heads)
    c.model.swin_window = 8         # 3-D Swin window height = width on the stride-8 map (reference 8)
    c.model.key_skip = False        # not the reference: head input = key-frame P3 + zero-init gate * neck output
    c.model.wavelet = "jnp"         # WTConv's Haar transform: 'jnp' (ops/haar.py) | 'jaxwt' (same values, jaxwt)
    # Train-mode BN of the per-frame backbone: statistics per frame and 5 running-stat updates per step, as the
    # reference's 5 separate backbone calls do (parity). False = one set of statistics over all B*T frames.
    c.model.per_frame_bn_stats = True
    # Initialisation (beltcrack_jax.models.initializers): 'reference' = PyTorch defaults + the reference's
    # weights_init (convs N(0, 0.02), BN2d weight N(1, 0.02)); 'yolox' = YOLOX's from-scratch init (PyTorch
    # default convs U(+-1/sqrt(fan_in))). prior_prob > 0: objectness/class biases start at that probability
    # (YOLOX: 0.01); 0 = reference (no prior).
    c.model.init = "reference"
    c.model.prior_prob = 0.0
    # Speed switches (BENCHMARKS.md). fast_ops: the same math with ops XLA runs faster (depthwise convs as taps,
    # head-major Swin attention, erf GELU, cascaded SPP pools, einsum reductions); False = the plain port. Both
    # pass the golden tests; they differ by float rounding only (tests/test_fast_paths.py).
    c.model.fast_ops = True
    c.model.fold_bn = False         # inference: BN folded into convs; apply to models.inference.fold_batchnorm(vars)
    c.model.compute_dtype = "float32"   # inference: "bfloat16" = bf16 forward, f32 conv/matmul accumulation
    c.model.remat = "none"          # backward pass: "modules" | "dots" = jax.checkpoint units (less memory)
    # Work split for XLA:CPU (same numbers). -1 = auto: on for CPU, off on accelerators (BENCHMARKS.md).
    c.model.swin_window_chunk = -1  # fast_ops: Swin windows per attention call (auto: 2 on CPU, 0 = all at once)
    c.model.backbone_per_frame = -1  # 1: one backbone call per frame (T parallel chains); 0: one call over B*T

    # ---- data (beltcrack_jax.data) ----------------------------------------------------------------------
    # TFDS dataset 'beltcrack/<config>': beltcrack14ks | beltcrack9kd (manual download, see data/README.md) or
    # synthetic_tiny | synthetic_demo | synthetic_14ks_like | synthetic_9kd_like (generated on first use).
    # Clip length T is model.num_frames (the only place it is set).
    c.data = ml_collections.ConfigDict()
    c.data.name = "beltcrack/beltcrack14ks"
    c.data.data_dir = "data/tfds"   # TFDS data_dir (relative to the repo root when launched from there)
    c.data.prepare = True           # build the TFDS dataset on first use if missing (synthetic configs generate)
    c.data.train_split = "train"
    c.data.val_split = "val"        # 14ks: train/val/test; 9kd: train/test (the reference validates 9kd on test)
    c.data.test_split = "test"
    c.data.image_size = 512         # model input (H, W) or int
    c.data.train_resize = "letterbox"   # reference training loader: PIL BICUBIC, (128,128,128) canvas
    c.data.eval_resize = "stretch"      # reference test script vid_map_coco.py: plain BICUBIC resize
    # Key frames: 'annotated' = frames with >= 1 box (reference, training and test); 'labelled' = also frames in
    # the json without boxes (annotated negatives); 'all' = every frame (training with negatives).
    c.data.key_frames = "annotated"
    c.data.eval_key_frames = "annotated"
    c.data.max_boxes = 64           # GT slots per clip (static; 14ks-like preset: <= 6 per frame seen); more = error
    c.data.decoder = "pil"          # 'pil' (bit-exact reference) | 'pil_draft' | 'cv2' (faster, few grey levels off)
    c.data.augment = ml_collections.ConfigDict()
    c.data.augment.flip = False     # all off in the reference (its loader's flip is commented out)
    c.data.augment.hsv = False
    c.data.augment.scale_jitter = False
    c.data.augment.hsv_gains = (0.015, 0.7, 0.4)
    c.data.augment.scale_range = (0.75, 1.25)
    c.data.shuffle = True           # per-epoch permutation seeded by (config.seed, epoch)
    c.data.num_workers = 4          # grain worker processes (0 = in-process); reference DataLoader used 4
    c.data.num_threads = 4          # read threads per process (clip batches loaded concurrently)
    c.data.prefetch = 2             # batches buffered per worker / thread pool
    # Decoded frames kept in memory per loading process, in MiB (0 = decode every time): each frame is in T clips
    # and in every epoch, so a dataset that fits is decoded once. Same pixels either way (data/pipeline.py).
    c.data.frame_cache_mb = 0
    c.data.skip_invalid = False     # sequences shorter than T: error (False) or drop their key frames (True)

    # ---- loss (beltcrack_jax.losses) --------------------------------------------------------------------
    # Passed as `detection_loss(raw, gt_boxes, gt_classes, gt_mask, num_classes=..., **config.loss)`;
    # the number of GT slots (max_boxes) is a data setting.
    c.loss = ml_collections.ConfigDict()
    c.loss.strides = (8,)            # one head level at stride 8 (anchors row-major y*W+x)
    c.loss.reg_weight = 5.0          # lambda_reg on L_reg
    c.loss.obj_weight = 1.0
    c.loss.cls_weight = 1.0
    c.loss.iou_weight = 0.5          # L_reg = nwd_weight * mean(1 - NWD) + iou_weight * sum(1 - CIoU)
    c.loss.nwd_weight = 0.5
    c.loss.nwd_constant = 12.0       # NWD C (hard-coded in the reference)
    c.loss.iou_loss_type = "ciou"    # "ciou" (reference) | "giou" | "iou" (1 - IoU^2)
    c.loss.focal_alpha = 0.25        # torchvision sigmoid_focal_loss, obj and cls
    c.loss.focal_gamma = 2.0
    c.loss.center_radius = 2.5       # SimOTA candidate square: GT centre +- radius * stride
    c.loss.topk_candidates = 10      # dynamic k = max(1, int(sum of top-10 candidate IoUs))
    c.loss.iou_cost_weight = 3.0     # SimOTA cost = cls_cost + 3 * (-log(IoU + 1e-8)) + 1e5 * (not in box & centre)
    c.loss.geo_penalty = 1e5

    # ---- optimiser, schedule, EMA, train loop (beltcrack_jax.train) -------------------------------------
    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 4           # GLOBAL clips per optimiser step (all devices x processes x grad_accum)
    c.train.epochs = 100
    c.train.num_train_steps = -1     # > 0: stop after this many steps (smoke runs); -1: epochs x steps/epoch
    c.train.grad_accum = 1           # micro-batches per step (gradients averaged, BN stats updated per micro-batch)
    c.train.compute_dtype = "float32"   # or "bfloat16" (forward/backward; params, optimiser, BN stats stay f32)
    # lr_max = base x (batch / nominal_batch) clamped to clamp_max; lr_min likewise with clamp_min (reference
    # Init_lr / Min_lr, nbs 64, SGD limits); yolox_warm_cos: quadratic warm-up from warmup_lr_ratio x lr_max,
    # cosine, flat lr_min for the last no_aug_epochs. unit 'epoch' = set once per epoch (reference), 'step'.
    c.train.lr = ml_collections.ConfigDict()
    c.train.lr.base = 1e-2
    c.train.lr.min = 1e-4
    c.train.lr.nominal_batch = 64
    c.train.lr.scaling = "linear"    # or "sqrt"
    c.train.lr.clamp = True
    c.train.lr.clamp_max = (5e-4, 5e-2)
    c.train.lr.clamp_min = (5e-6, 5e-4)
    c.train.lr.warmup_epochs = 3
    c.train.lr.warmup_lr_ratio = 0.1
    c.train.lr.no_aug_epochs = 5
    c.train.lr.unit = "epoch"
    c.train.optimizer = "sgd"        # reference; "adamw" = AdamW over the same groups (decay on pg1 only)
    c.train.adam_b1 = 0.9
    c.train.adam_b2 = 0.999
    c.train.momentum = 0.937         # SGD, PyTorch form, nesterov
    c.train.nesterov = True
    c.train.weight_decay = 5e-4      # conv / linear / LayerNorm / BN1d weights only (spec section 6 groups)
    c.train.ema = ml_collections.ConfigDict()
    c.train.ema.decay = 0.9999       # d = decay x (1 - exp(-updates / tau)), params and BN statistics
    c.train.ema.tau = 2000.0
    # Not in the reference (1 = parity): learning-rate multiplier on the TARFusion parameters (neck.tar.*), the
    # normalisation-free conv hourglass of ATM, whose output grows without bound at a large AdamW lr
    # (EXPERIMENTS.md 2c).
    c.train.lr_scale_tar = 1.0
    c.train.train_frozen = False     # True: also train nolocal.gamma and the Swin bias tables (reference: frozen)
    # Weights to start from (name + shape match, the rest keeps its init): the folder `python -m
    # beltcrack_jax.convert [--yolox-s] --output X` writes, or an .npz/.pth state dict with PyTorch names.
    c.train.init_from = ""
    c.train.log_every_steps = 50
    c.train.progress_bar = True
    c.train.checkpoint_every_epochs = 5   # reference saves every 5 epochs (+ last)
    c.train.checkpoint_every_steps = 0    # > 0 overrides the epoch interval
    c.train.max_to_keep = 3
    c.train.async_checkpoints = True
    c.train.allow_data_change = False   # resume even if the dataset fingerprint differs from the checkpoint's
    c.train.max_nonfinite_skips = 0     # > 0: skip up to N non-finite steps over the run (no update, counted); 0: stop
    c.train.eval_every_epochs = 5    # periodic evaluation hook (reference EvalCallback period)
    c.train.eval_every_steps = 0     # > 0 overrides the epoch interval
    c.train.peak_flops = 0.0         # per-device peak FLOP/s for MFU; 0 = from the device table
    c.train.cpu_peak_flops = 5e10    # per-device peak assumed on CPU hosts

    # ---- evaluation (beltcrack_jax.eval) ----------------------------------------------------------------
    # Profiles (thresholds, frames, resize) are defined and printed by beltcrack_jax.eval.profiles:
    # paper = vid_map_coco.py (annotated frames, stretch, conf 0.003, NMS 0.2, no cap); paper-stated = 0.001/0.65;
    # callback = training EvalCallback (letterbox, 0.05/0.5, 100 boxes); deployment = all frames + frame/event metrics.
    c.eval = ml_collections.ConfigDict()
    c.eval.profile = "paper"         # evaluate.py and the train loop's periodic evaluation
    c.eval.split = ""                # TFDS split to evaluate; "" = config.data.test_split (periodic eval too)
    c.eval.batch_size = 8            # clips per device step (padded + masked at the end of the split)
    c.eval.use_ema = True            # evaluate the EMA weights (the reference saves/evaluates the EMA model)
    c.eval.coco_backend = "pycocotools"   # or "faster_coco_eval" (optional package, identical numbers)
    c.eval.nms_method = "auto"       # "fixpoint" (accelerators) | "sequential" (CPU) | "auto"
    c.eval.max_images = 0            # > 0: evaluate only the first N key frames (quick periodic checks)
    c.eval.num_vis = 12              # key frames in the detection grid PNG (0 = no plots)
    c.eval.vis_score = 0.3           # score threshold for boxes drawn in the detection grid
    c.eval.deployment = ml_collections.ConfigDict()   # only the `deployment` profile reads these
    c.eval.deployment.score_thres = 0.5   # fixed operating point for frame/event metrics
    c.eval.deployment.match_iou = 0.5
    c.eval.deployment.first_k = 5         # a crack counts as found if detected within its first k frames in view
    c.eval.deployment.link_iou = 0.1      # GT track linking when the json has no track_id
    c.eval.deployment.max_gap = 2
    return c
