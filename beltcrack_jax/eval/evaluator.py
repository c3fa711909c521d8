"""Runs one split: model -> detections in original pixels -> metrics. Used by `evaluate.py` and, through
`make_eval_hook`, as the train loop's periodic evaluation.

    Evaluator(config).run(variables) -> EvalResult(metrics, detections, gt, ...)
    make_eval_hook(config, model, mesh)(state, step) -> {map50, map50_95, precision, recall, f1, ...}

Per batch (jit, static shapes): uint8 clips -> `normalize` -> model (eval-mode BN) -> `decode` -> class-aware
NMS (the profile's conf / NMS IoU / cap) -> boxes mapped back with the pipeline's own resize params
(`[nw, nh, dx, dy]`: x_orig = (x_in - dx) * W / nw, the exact inverse of what the loader did; for a stretch this
is the reference's `yolo_correct_boxes`, for a letterbox it uses the loader's int() sizes instead of its round()).
Padding clips (`valid` False) are dropped on the host. The profile picks the key frames (annotated only, or
every frame with known ground truth) and the resize mode (it overrides `config.data.eval_resize`).

Checkpoints: `load_variables(config, workdir=... | checkpoint=...)` restores the train state written by
`beltcrack_jax.train.checkpoint` read-only (no optimiser needed) and returns the EMA (default) or raw weights;
a checkpoint of another model config is refused with the differing fields named.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from beltcrack_jax.eval import coco as coco_lib
from beltcrack_jax.eval import deployment as deploy_lib
from beltcrack_jax.eval import postprocess as pp
from beltcrack_jax.eval.profiles import Profile, get_profile

TAG_KEYS = ("view", "light", "weather", "speed")


# ------------------------------------------------------------------------------------------------ config helpers


def _get(cfg, key, default=None):
    try:
        v = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    except (AttributeError, KeyError):
        return default
    return default if v is None else v


def profile_from_config(config, name: str | None = None) -> Profile:
    """The profile named by `name` or `config.eval.profile`, with `config.eval.deployment` overrides for the
    deployment profile."""
    ev = _get(config, "eval", {})
    name = name or _get(ev, "profile", "paper")
    overrides = None
    if name == "deployment":
        dep = _get(ev, "deployment", None)
        if dep is not None:
            d = dep.to_dict() if hasattr(dep, "to_dict") else dict(dep)
            overrides = {k: v for k, v in d.items() if v is not None}
    return get_profile(name, overrides)


def input_hw(config) -> tuple[int, int]:
    from beltcrack_jax.data.transforms import as_hw

    return as_hw(_get(_get(config, "data", {}), "image_size", 512))


def pipeline_params(resize: jax.Array, orig_hw: jax.Array) -> jax.Array:
    """(B, 5) `[nw, nh, dx, dy, flip]` + (B, 2) original (H, W) -> (B, 4) `[scale_y, scale_x, off_y, off_x]`
    for `postprocess.undo_resize` (input = orig * n / orig_size + d)."""
    r = resize.astype(jnp.float32)
    hw = orig_hw.astype(jnp.float32)
    return jnp.stack([r[:, 1] / hw[:, 0], r[:, 0] / hw[:, 1], r[:, 3], r[:, 2]], axis=-1)


def default_normalize() -> Callable:
    try:
        from beltcrack_jax.data.transforms import normalize
        return normalize
    except ImportError:  # pragma: no cover
        from beltcrack_jax.train.steps import normalize_clips
        return normalize_clips


# ------------------------------------------------------------------------------------------------ checkpoints


def _flat_shapes(tree, prefix=()) -> dict[tuple, tuple]:
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flat_shapes(v, prefix + (str(k),)))
    elif tree is not None:
        out[prefix] = tuple(np.shape(tree))
    return out


def check_variables(variables: dict, expected: dict, what: str) -> None:
    """ValueError naming missing / unexpected / mis-shaped leaves of `variables` vs the model's `expected`."""
    got, want = _flat_shapes(variables), _flat_shapes(expected)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    shape = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    if missing or extra or shape:
        parts = []
        if shape:
            parts.append("shape mismatch: " + "; ".join(f"{'/'.join(k)} {got[k]} vs model {want[k]}"
                                                          for k in shape[:5]))
        if missing:
            parts.append(f"{len(missing)} model variable(s) missing, e.g. {'/'.join(missing[0])}")
        if extra:
            parts.append(f"{len(extra)} unexpected variable(s), e.g. {'/'.join(extra[0])}")
        raise ValueError(f"{what} does not fit the model built from this config: " + "; ".join(parts)
                         + " (was it trained with another config.model?)")


def resolve_checkpoint(workdir: str | None = None, checkpoint: str | None = None,
                       step: int | str | None = None) -> tuple[str, str | None]:
    """-> (state item folder, step folder or None). `checkpoint` may be a workdir, its `checkpoints/` folder,
    a step folder (`checkpoints/<step>`) or the `state` item folder itself. `step`: a number, 'latest' (None)
    or 'best' (the best-on-validation checkpoint the train loop keeps in `<workdir>/best`)."""
    if (workdir is None) == (checkpoint is None):
        raise ValueError("give exactly one of workdir / checkpoint")
    path = os.path.abspath(workdir or checkpoint)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if isinstance(step, str):
        if step == "best":
            info_path = os.path.join(path, "best", "best.json")
            if not os.path.isfile(info_path):
                raise FileNotFoundError(f"no best checkpoint in {path} ({info_path} is missing: the train loop "
                                        "keeps one only when its periodic evaluation runs, train.eval_every_*)")
            with open(info_path) as f:
                best = int(json.load(f)["step"])
            state = os.path.join(path, "best", str(best), "state")
            if not os.path.isdir(state):
                raise FileNotFoundError(f"{info_path} names step {best}, but {state} does not exist")
            return state, os.path.dirname(state)
        if step == "latest":
            step = None
        elif step.isdigit():
            step = int(step)
        else:
            raise ValueError(f"step must be a number, 'latest' or 'best', got {step!r}")
    if os.path.isfile(os.path.join(path, "_METADATA")) or os.path.isfile(os.path.join(path, "manifest.ocdbt")):
        parent = os.path.dirname(path)
        return path, parent if os.path.basename(path) == "state" else None
    if os.path.isdir(os.path.join(path, "state")):
        return os.path.join(path, "state"), path
    root = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    steps = sorted(int(d) for d in os.listdir(root) if d.isdigit() and os.path.isdir(os.path.join(root, d, "state")))
    if not steps:
        raise FileNotFoundError(f"no checkpoint (a <step>/state folder) under {root}")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} under {root} (available: {steps})")
    return os.path.join(root, str(step), "state"), os.path.join(root, str(step))


def _stored_config(step_dir: str | None) -> dict | None:
    if step_dir is None:
        return None
    candidates = [os.path.join(os.path.dirname(os.path.dirname(step_dir)), "config.json"),
                  os.path.join(step_dir, "config", "metadata")]
    for c in candidates:
        if os.path.isfile(c):
            try:
                with open(c) as f:
                    return json.load(f)
            except (OSError, ValueError):
                continue
    return None


def model_config_differences(stored: dict, config) -> list[str]:
    """Differences between a stored run's `model` section and this config's (field: stored vs now).

    Fields the stored run does not have (added to the config after it was written) are not compared; the
    parameter-shape check in `load_variables` still catches any architectural mismatch."""
    cur = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
    old = stored.get("model", {})
    out = []
    for k in sorted(set(old)):
        a, b = old.get(k, "<absent>"), cur.get(k, "<absent>")
        if isinstance(a, list):
            a = tuple(a)
        if isinstance(b, list):
            b = tuple(b)
        if a != b:
            out.append(f"model.{k}: checkpoint {a!r} vs config {b!r}")
    return out


def load_variables(config, *, workdir: str | None = None, checkpoint: str | None = None, step: int | None = None,
                   use_ema: bool = True, model=None, log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Restores weights for `config`'s model from a train checkpoint -> (variables, info)."""
    import orbax.checkpoint as ocp

    state_dir, step_dir = resolve_checkpoint(workdir, checkpoint, step)
    stored = _stored_config(step_dir)
    if stored is not None:
        diffs = model_config_differences(stored, config)
        if diffs:
            raise ValueError(f"checkpoint {state_dir} was trained with a different model config: "
                             + "; ".join(diffs))
    try:
        state = ocp.StandardCheckpointer().restore(state_dir)
    except Exception as e:  # orbax raises assorted types
        raise ValueError(f"cannot read checkpoint {state_dir}: {type(e).__name__}: {str(e)[:300]}") from e
    if not isinstance(state, dict) or "params" not in state:
        raise ValueError(f"checkpoint {state_dir} holds no train state with 'params' (keys: "
                         f"{sorted(state) if isinstance(state, dict) else type(state).__name__})")
    pk, bk = ("ema_params", "ema_batch_stats") if use_ema else ("params", "batch_stats")
    if use_ema and pk not in state:
        raise ValueError(f"checkpoint {state_dir} has no EMA weights ('ema_params'); use use_ema=False")
    variables = {"params": state[pk], "batch_stats": state.get(bk) or {}}
    model = model if model is not None else _build_model(config)
    hw = input_hw(config)
    t = int(config.model.num_frames)
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, t) + hw + (3,)), train=False))
    expected = {"params": expected["params"], "batch_stats": expected.get("batch_stats", {})}
    check_variables(variables, expected, f"checkpoint {state_dir}")
    variables = jax.tree.map(jnp.asarray, variables)
    stp = int(np.asarray(state.get("step", -1)))
    log(f"loaded {'EMA' if use_ema else 'raw'} weights from {state_dir} (train step {stp})")
    return variables, {"path": state_dir, "step": stp, "ema": use_ema}


def _build_model(config):
    from beltcrack_jax.models import build_model

    return build_model(config)


# ------------------------------------------------------------------------------------------------ ground truth


def split_ground_truth(index, records: np.ndarray | None = None) -> dict:
    """COCO GT of the split's labelled frames (in the release json), images enriched with `sequence`,
    `frame_index`, `record_index` and the condition tags; annotations get a `track_id` if the index has per-box
    `track_ids` (the deployment metrics then use them instead of IoU linking). `records` restricts to those
    record indices."""
    recs = np.flatnonzero(index.annotated) if records is None else np.asarray(records, np.int64)
    track_ids = getattr(index, "track_ids", None)  # optional (n_boxes,) per-box crack ids, -1 = unknown
    images, anns = [], []
    for i in recs:
        i = int(i)
        if not index.annotated[i]:
            continue
        seq = index.sequences[int(index.sequence_id[i])]
        im = dict(id=int(index.image_id[i]), file_name=index.file_name[i], width=int(index.width[i]),
                  height=int(index.height[i]), sequence=seq.get("name", str(index.sequence_id[i])),
                  frame_index=int(index.frame_index[i]), record_index=i)
        im.update({k: str(seq.get(k, "") or "") for k in TAG_KEYS})
        images.append(im)
        a0 = int(index.box_offset[i])
        for j, (box, lab) in enumerate(zip(*index.frame_boxes(i))):
            x, y, w, h = (float(v) for v in box)
            ann = dict(id=len(anns) + 1, image_id=im["id"], category_id=int(lab) + 1, bbox=[x, y, w, h],
                       area=w * h, iscrowd=0)
            if track_ids is not None and track_ids[a0 + j] >= 0:  # crack identity, if the data carries it
                ann["track_id"] = f"{im['sequence']}#{int(track_ids[a0 + j])}"
            anns.append(ann)
    ncat = int(index.labels.max()) + 1 if len(index.labels) else 1
    cats = [dict(id=1, name="crack")] + [dict(id=c + 1, name=f"class{c}") for c in range(1, ncat)]
    return dict(images=images, annotations=anns, categories=cats)


def condition_breakdown(gt: dict, detections: list[dict], image_ids: list, profile: str,
                        backend: str = "pycocotools") -> dict:
    """{tag: {value: metrics subset}} for view/light/weather/speed tags present on the evaluated images."""
    out: dict[str, dict] = {}
    ids = set(image_ids)
    ims = [im for im in gt["images"] if im["id"] in ids]
    for tag in TAG_KEYS:
        values = sorted({im.get(tag, "") for im in ims} - {""})
        if not values:
            continue
        out[tag] = {}
        for v in values:
            sub = [im["id"] for im in ims if im.get(tag, "") == v]
            m = coco_lib.coco_metrics(gt, detections, profile=profile, image_ids=sub, backend=backend)
            out[tag][v] = {k: m[k] for k in ("num_images", "num_gt", "map50", "map50_95", "precision", "recall",
                                             "f1")}
    return out


# ------------------------------------------------------------------------------------------------ evaluator


@functools.partial(jax.jit, static_argnames=("model", "input_hw", "max_detections", "method", "normalize"))
def predict_batch(variables, clips, resize, orig_hw, conf, nms_thr, *, model, input_hw, max_detections, method,
                  normalize):
    """uint8 clips (B,T,H,W,3) -> (Detections with xyxy boxes in original pixels, (B,h,w) score map).
    resize (B,5) `[nw, nh, dx, dy, flip]` and orig_hw (B,2) from the pipeline; conf / nms_thr traced scalars.
    Module-level so evaluators with the same settings share one compilation."""
    raw = model.apply(variables, normalize(clips), train=False)
    dets = pp.nms(pp.decode(raw, input_hw), conf, nms_thr, max_detections=max_detections, method=method)
    h, w = input_hw
    boxes = pp.undo_resize(dets.boxes * jnp.array([w, h, w, h], jnp.float32), pipeline_params(resize, orig_hw))
    sig = jax.nn.sigmoid(raw[..., 4:].astype(jnp.float32))
    smap = sig[..., 0] * jnp.max(sig[..., 1:], axis=-1)
    return dets._replace(boxes=boxes), smap


@dataclasses.dataclass
class EvalResult:
    metrics: dict[str, Any]
    detections: list[dict]            # COCO results (all candidates kept by NMS, original pixels)
    gt: dict                          # COCO GT of the evaluated split (labelled frames)
    image_ids: list                   # the evaluated image ids
    vis: list[dict]                   # samples for figures: record_index, image_id, score_map, dets, gt boxes
    profile: Profile


class Evaluator:
    """Evaluates one split under one profile. `run(variables)` or, as the train hook, `(state, step)`."""

    def __init__(self, config, *, profile: str | Profile | None = None, split: str | None = None, model=None,
                 mesh=None, data_dir: str | None = None, max_images: int | None = None,
                 normalize: Callable | None = None, log: Callable[[str], None] = print,
                 data_fn: Callable[[], Any] | None = None):
        self.config = config
        ev = _get(config, "eval", {})
        self.profile = profile if isinstance(profile, Profile) else profile_from_config(config, profile)
        self.split = split or _get(ev, "split", None) or _get(_get(config, "data", {}), "test_split", "test")
        self.model = model if model is not None else _build_model(config)
        self.mesh = mesh
        self.data_dir = data_dir
        self.max_images = int(max_images if max_images is not None else _get(ev, "max_images", 0))
        self.batch_size = int(_get(ev, "batch_size", 8))
        self.use_ema = bool(_get(ev, "use_ema", True))
        self.backend = _get(ev, "coco_backend", "pycocotools")
        self.method = _get(ev, "nms_method", "auto")
        self.num_vis = int(_get(ev, "num_vis", 12))
        self.normalize = normalize or default_normalize()
        self.log = log
        self.input_hw = input_hw(config)
        self.data_fn = data_fn

    def _predict(self, variables, clips, resize, orig_hw, conf, nms_thr):
        return predict_batch(variables, clips, resize, orig_hw, conf, nms_thr, model=self.model,
                             input_hw=self.input_hw, max_detections=self.profile.max_detections, method=self.method,
                             normalize=self.normalize)

    def data_config(self):
        """A copy of the config whose eval resize is the profile's."""
        cfg = copy.deepcopy(self.config)
        mode = "letterbox" if self.profile.letterbox else "stretch"
        if hasattr(cfg, "unlocked"):
            with cfg.unlocked():
                cfg.data.eval_resize = mode
        else:
            cfg["data"]["eval_resize"] = mode
        return cfg

    def _batches(self):
        if self.data_fn is not None:  # injected (tests): an iterator of batches with .info['index']
            return self.data_fn()
        from beltcrack_jax.data import pipeline

        pc, pi = jax.process_count(), jax.process_index()
        if self.batch_size % pc:
            raise ValueError(f"eval.batch_size={self.batch_size} is not divisible by the process count {pc}")
        it = pipeline.make_eval_iterator(self.data_config(), self.split, process_index=pi, process_count=pc,
                                         batch_size_per_process=self.batch_size // pc, data_dir=self.data_dir,
                                         key_frames="annotated" if self.profile.annotated_only else "labelled")
        return it

    def _device_batch(self, batch):
        keys = ("clips", "resize", "orig_hw")
        host = {k: np.asarray(batch[k]) for k in keys}
        if self.mesh is not None and host["clips"].shape[0] % max(1, len(self.mesh.local_devices)) == 0:
            from beltcrack_jax.train import sharding

            return sharding.global_batch(host, self.mesh)
        return {k: jnp.asarray(v) for k, v in host.items()}

    @staticmethod
    def _host(x):
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    def _gather_meta(self, batch, key):
        x = np.asarray(batch[key])
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return x

    def run(self, variables, *, collect_vis: bool | None = None, step: int | None = None) -> EvalResult:
        """Runs the split with `variables` ({'params', 'batch_stats'}) and computes the profile's metrics."""
        prof = self.profile
        self.log(f"eval [{self.split}] {prof.describe()}")
        t0 = time.perf_counter()
        it = self._batches()
        index = it.info["index"]
        cats = [1] + [c + 1 for c in range(1, int(index.labels.max()) + 1 if len(index.labels) else 1)]
        collect_vis = (self.num_vis > 0) if collect_vis is None else collect_vis
        dets_all: list[dict] = []
        run_ids: list = []
        run_records: list = []
        vis_pool: list[dict] = []
        n_batches = 0
        for batch in it:
            b = self._device_batch(batch)
            dets, smap = self._predict(variables, b["clips"], b["resize"], b["orig_hw"],
                                       jnp.float32(prof.conf_thres), jnp.float32(prof.nms_thres))
            boxes, scores, classes, valid = (self._host(dets.boxes), self._host(dets.scores),
                                             self._host(dets.classes), self._host(dets.valid))
            ok = self._gather_meta(batch, "valid")
            image_ids = self._gather_meta(batch, "image_id")
            recs = self._gather_meta(batch, "record_index")
            smap_h = self._host(smap) if collect_vis else None
            for j in np.flatnonzero(ok):
                v = valid[j]
                iid = int(image_ids[j])
                run_ids.append(iid)
                run_records.append(int(recs[j]))
                dets_all.extend(coco_lib.detections_to_coco(boxes[j][v], scores[j][v], classes[j][v], iid, cats))
                if collect_vis:
                    vis_pool.append(dict(record_index=int(recs[j]), image_id=iid, score_map=smap_h[j],
                                         boxes=boxes[j][v], scores=scores[j][v]))
            n_batches += 1
            if self.max_images and len(run_ids) >= self.max_images:
                break
        t_run = time.perf_counter() - t0
        if not run_ids:
            raise ValueError(f"split {self.split!r} yielded no key frames to evaluate")
        gt = split_ground_truth(index, np.asarray(run_records))
        known = {im["id"] for im in gt["images"]}
        unknown = sorted(set(run_ids) - known)
        if unknown:
            raise ValueError(f"evaluated key frames with image ids {unknown[:10]} have no ground truth in split "
                             f"{self.split!r} (unannotated frames cannot be scored)")
        metrics = coco_lib.coco_metrics(gt, dets_all, profile=prof.name if prof.name in coco_lib.ANNOTATED_ONLY
                                        else ("paper" if prof.annotated_only else "deployment"),
                                        image_ids=run_ids, backend=self.backend)
        if prof.score_thres is not None:
            dep = deploy_lib.deployment_metrics(gt, dets_all, score_thres=prof.score_thres, match_iou=prof.match_iou,
                                                first_k=prof.first_k, link_iou=prof.link_iou, max_gap=prof.max_gap)
            metrics["deployment"] = dep
        metrics["by_condition"] = condition_breakdown(gt, dets_all, run_ids, metrics["profile"], self.backend)
        metrics.update(split=self.split, profile_settings=prof.to_dict(), profile_line=prof.describe(),
                       eval_seconds=time.perf_counter() - t0, inference_seconds=t_run, batches=n_batches)
        if step is not None:
            metrics["step"] = int(step)
        vis = select_vis(vis_pool, gt, self.num_vis) if collect_vis else []
        return EvalResult(metrics=metrics, detections=dets_all, gt=gt, image_ids=run_ids, vis=vis, profile=prof)

    def __call__(self, state, step: int) -> dict[str, float]:
        """Train-loop hook: evaluates `state` (EMA weights if config.eval.use_ema) -> scalar metrics."""
        res = self.run(state.variables(ema=self.use_ema), collect_vis=False, step=step)
        return scalar_metrics(res.metrics)


def scalar_metrics(m: dict) -> dict[str, float]:
    keys = ("map50", "map50_95", "precision", "recall", "f1")
    out = {k: float(m[k]) for k in keys}
    dep = m.get("deployment")
    if dep:
        for k in ("fp_per_frame", "fp_per_clean_frame", "event_recall", "delay_mean"):
            v = dep.get(k)
            if v is not None:
                out[f"deployment/{k}"] = float(v)
    return out


def select_vis(pool: list[dict], gt: dict, n: int) -> list[dict]:
    """n samples spread evenly over the evaluated frames, preferring frames with GT; attaches GT xyxy boxes."""
    if n <= 0 or not pool:
        return []
    by_img: dict[Any, list] = {}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        by_img.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    with_gt = [p for p in pool if p["image_id"] in by_img] or pool
    pick = np.unique(np.linspace(0, len(with_gt) - 1, min(n, len(with_gt))).round().astype(int))
    out = []
    for i in pick:
        p = dict(with_gt[int(i)])
        p["gt_boxes"] = np.asarray(by_img.get(p["image_id"], []), np.float64).reshape(-1, 4)
        out.append(p)
    return out


def make_eval_hook(config, model, mesh) -> Callable[[Any, int], dict]:
    """The periodic evaluation the train loop calls as hook(state, step) -> scalars, on the validation split
    (`config.data.val_split`: model selection never looks at the test split)."""
    return Evaluator(config, model=model, mesh=mesh, split=config.data.val_split, log=lambda s: None)


# ------------------------------------------------------------------------------------------------ reports


def format_table(metrics: dict) -> str:
    """Human-readable summary: the profile line, the headline metrics, deployment and per-condition rows."""
    lines = [metrics.get("profile_line", f"profile={metrics.get('profile')}"),
             f"split={metrics.get('split')} images={metrics['num_images']} gt={metrics['num_gt']} "
             f"detections={metrics['num_detections']}",
             f"{'':24s}{'mAP50':>8s}{'mAP':>8s}{'P':>8s}{'R':>8s}{'F1':>8s}"]

    def row(name, m):
        vals = [m.get(k, float("nan")) for k in ("map50", "map50_95", "precision", "recall", "f1")]
        return f"{name[:24]:24s}" + "".join(f"{v:8.4f}" if v is not None else f"{'-':>8s}" for v in vals)

    lines.append(row("all", metrics))
    for tag, vals in metrics.get("by_condition", {}).items():
        for v, m in vals.items():
            lines.append(row(f"  {tag}={v} ({m['num_images']})", m))
    dep = metrics.get("deployment")
    if dep:
        lines.append(f"deployment @score {dep['score_thres']:g}: P {dep['precision']:.4f} R {dep['recall']:.4f} "
                     f"F1 {dep['f1']:.4f} | FP/frame {dep['fp_per_frame']:.4f} FP/clean frame "
                     f"{dep['fp_per_clean_frame']:.4f} clean-frame alarm rate {dep['clean_frame_alarm_rate']:.4f} | "
                     f"events {dep['num_events']} recall {dep['event_recall']:.4f} (first {dep['first_k']} frames) "
                     f"delay mean {dep['delay_mean']:.2f} median {dep['delay_median']:.2f} p90 {dep['delay_p90']:.2f}"
                     f" frames | tracks from {dep['track_source']}")
    return "\n".join(lines)


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    return x


def load_key_frames(config, split: str, records: list[int], data_dir: str | None = None) -> dict[int, np.ndarray]:
    """Decodes the key frames (original size, RGB uint8) of the given record indices from the TFDS split."""
    from beltcrack_jax.data import pipeline
    from beltcrack_jax.data.transforms import decode_frame

    name = _get(config.data, "name", None)
    src, _ = pipeline.open_source(name, split, data_dir if data_dir is not None else _get(config.data, "data_dir"),
                                  prepare=False)
    return {int(r): np.asarray(decode_frame(src[int(r)]["image"])) for r in records}


def write_figures(result: EvalResult, out_dir: str, config, *, frames: dict[int, np.ndarray] | None = None,
                  data_dir: str | None = None, vis_score: float | None = None) -> dict[str, str]:
    """PR curve PNG, detection grid PNG (TP green / miss red / FP yellow) and heat-map grid PNG."""
    from beltcrack_jax.data.transforms import resize_params as tr_resize_params
    from beltcrack_jax.eval import plots

    m = result.metrics
    out = {"pr_curve": plots.pr_curve_png(os.path.join(out_dir, "pr_curve.png"),
                                          {f"{m['profile']} {m.get('split', '')}": (m["pr_curve"], m["map50"])},
                                          title=f"PR @ IoU 0.5: {result.profile.name} (conf "
                                                f"{result.profile.conf_thres:g}, NMS {result.profile.nms_thres:g})")}
    if not result.vis:
        return out
    vis_score = float(vis_score if vis_score is not None else _get(_get(config, "eval", {}), "vis_score", 0.3))
    if frames is None:
        frames = load_key_frames(config, m["split"], [v["record_index"] for v in result.vis], data_dir)
    imgs, gts, dets, scores, titles, heat = [], [], [], [], [], []
    hw = input_hw(config)
    mode = "letterbox" if result.profile.letterbox else "stretch"
    by_id = {im["id"]: im for im in result.gt["images"]}
    for v in result.vis:
        f = frames[v["record_index"]]
        keep = v["scores"] >= vis_score
        imgs.append(f)
        gts.append(v["gt_boxes"])
        dets.append(v["boxes"][keep])
        scores.append(v["scores"][keep])
        im = by_id.get(v["image_id"], {})
        titles.append(f"{im.get('sequence', '')}/{im.get('frame_index', '')}")
        p = tr_resize_params(mode, f.shape[:2], hw)
        heat.append(plots.heatmap_overlay(f, v["score_map"], (p.nw, p.nh, p.dx, p.dy), hw))
    grid = plots.detection_grid(imgs, gts, dets, scores, titles)
    out["detection_grid"] = plots.save_png(os.path.join(out_dir, "detection_grid.png"), grid)
    hgrid = plots.detection_grid(heat, [np.zeros((0, 4))] * len(heat), [np.zeros((0, 4))] * len(heat),
                                 [np.zeros(0)] * len(heat), titles)
    out["heatmap_grid"] = plots.save_png(os.path.join(out_dir, "heatmap_grid.png"), hgrid)
    return out


def run_evaluation(config, *, workdir: str | None = None, checkpoint: str | None = None, step: int | None = None,
                   variables: dict | None = None, use_ema: bool | None = None, profile: str | None = None,
                   split: str | None = None, out_dir: str | None = None, data_dir: str | None = None,
                   figures: bool = True, log: Callable[[str], None] = print, data_fn=None,
                   frames: dict | None = None) -> dict:
    """evaluate.py's body: load weights, run the split, write metrics.json / detections.json / conditions.csv /
    figures into `out_dir`, print the table. Returns the metrics dict (with `outputs` naming the files)."""
    use_ema = bool(_get(_get(config, "eval", {}), "use_ema", True)) if use_ema is None else use_ema
    ev = Evaluator(config, profile=profile, split=split, data_dir=data_dir, log=log, data_fn=data_fn)
    info = {"path": None, "step": None, "ema": None}
    if variables is None:
        variables, info = load_variables(config, workdir=workdir, checkpoint=checkpoint, step=step, use_ema=use_ema,
                                         model=ev.model, log=log)
    if out_dir is None:
        base = workdir or (os.path.dirname(os.path.dirname(os.path.dirname(info["path"]))) if info["path"] else ".")
        out_dir = os.path.join(base, "eval", f"{ev.profile.name}_{ev.split}_step{info['step']}")
    os.makedirs(out_dir, exist_ok=True)
    res = ev.run(variables, collect_vis=figures and ev.num_vis > 0, step=info["step"])
    m = dict(res.metrics)
    m["checkpoint"] = info
    outputs = {"metrics": os.path.join(out_dir, "metrics.json"),
               "detections": os.path.join(out_dir, "detections.json"),
               "conditions": os.path.join(out_dir, "conditions.csv")}
    with open(outputs["detections"], "w") as f:
        json.dump(res.detections, f)
    with open(outputs["conditions"], "w") as f:
        f.write("tag,value,num_images,num_gt,map50,map50_95,precision,recall,f1\n")
        for tag, vals in m.get("by_condition", {}).items():
            for v, r in vals.items():
                f.write(f"{tag},{v},{r['num_images']},{r['num_gt']},{r['map50']:.6f},{r['map50_95']:.6f},"
                        f"{r['precision']:.6f},{r['recall']:.6f},{r['f1']:.6f}\n")
    if figures:
        outputs.update(write_figures(res, out_dir, config, frames=frames, data_dir=data_dir))
    m["outputs"] = outputs
    with open(outputs["metrics"], "w") as f:
        json.dump(_json_safe({k: v for k, v in m.items() if k != "summary_text"}), f, indent=1)
    log(m["summary_text"].rstrip())
    log(format_table(m))
    log(f"wrote {', '.join(sorted(outputs.values()))}")
    return m
