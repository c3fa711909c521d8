"""Runs one split: model -> detections in original pixels -> metrics (the evaluation job; `evaluator.py` wires
it to evaluate.py and the train loop, `report.py` writes what it returns).

    Evaluator(config).run(variables) -> EvalResult(metrics, detections, gt, image_ids, vis, profile)

Per batch: `predict_step.predict_step` (jit, static shapes; normalise -> model -> decode -> class-aware NMS with
the profile's conf / NMS IoU / cap -> boxes mapped back with the pipeline's own resize metadata). Padding clips
(`valid` False) are dropped on the host. The profile picks the key frames (annotated only, or every frame with
known ground truth) and the resize mode (it overrides `config.data.eval_resize`). Ground truth:
`SplitIndex.coco_ground_truth`. Weights: `train.checkpoint.load_variables`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from beltcrack_jax.data.pipeline import CONDITION_TAGS
from beltcrack_jax.eval import coco as coco_lib
from beltcrack_jax.eval import deployment as deploy_lib
from beltcrack_jax.eval.predict_step import predict_step
from beltcrack_jax.eval.profiles import Profile, get_profile


def profile_from_config(config, name: str | None = None) -> Profile:
    """The profile named by `name` or `config.eval.profile`, with `config.eval.deployment` overrides for the
    deployment profile."""
    name = name or config.eval.profile
    overrides = None
    if name == "deployment":
        overrides = {k: v for k, v in config.eval.deployment.to_dict().items() if v is not None}
    return get_profile(name, overrides)


def condition_breakdown(gt: dict, detections: list[dict], image_ids: list, profile: str,
                        backend: str = "pycocotools") -> dict:
    """{tag: {value: metrics subset}} for view/light/weather/speed tags present on the evaluated images."""
    out: dict[str, dict] = {}
    ids = set(image_ids)
    ims = [im for im in gt["images"] if im["id"] in ids]
    for tag in CONDITION_TAGS:
        group = _condition_groups([im.get(tag, "") for im in ims])
        values = sorted(set(group) - {""})
        if not values:
            continue
        out[tag] = {}
        for v in values:
            sub = [im["id"] for im, g in zip(ims, group) if g == v]
            m = coco_lib.coco_metrics(gt, detections, profile=profile, image_ids=sub, backend=backend)
            out[tag][v] = {k: m[k] for k in ("num_images", "num_gt", "map50", "map50_95", "precision", "recall",
                                             "f1")}
    return out


def _condition_groups(values: list[str], max_groups: int = 3) -> list[str]:
    """The group of each image's tag value: the value itself, or, for a numeric tag with more than `max_groups`
    distinct values (e.g. a belt speed per sequence), its tercile as 'low (<= a)' / 'mid' / 'high (> b)'."""
    try:
        numbers = np.array([float(v) if v != "" else np.nan for v in values])
    except ValueError:
        return values
    finite = numbers[np.isfinite(numbers)]
    if len(np.unique(finite)) <= max_groups:
        return values
    a, b = np.quantile(finite, [1 / 3, 2 / 3])
    names = (f"low (<= {a:.3g})", f"mid ({a:.3g}-{b:.3g})", f"high (> {b:.3g})")
    return ["" if not np.isfinite(x) else names[0] if x <= a else names[1] if x <= b else names[2]
            for x in numbers]


@dataclasses.dataclass
class EvalResult:
    metrics: dict[str, Any]
    detections: list[dict]            # COCO results (all candidates kept by NMS, original pixels)
    gt: dict                          # COCO GT of the evaluated split (labelled frames)
    image_ids: list                   # the evaluated image ids
    vis: list[dict]                   # samples for figures: record_index, image_id, score_map, dets, gt boxes
    profile: Profile


class Evaluator:
    """Evaluates one split under one profile: `run(variables)`.

    Options come from `config.eval` unless given here; `data_fn` (tests) replaces the split's iterator by an
    iterator of batches with `.info['index']`."""

    def __init__(self, config, *, profile: str | Profile | None = None, split: str | None = None, model=None,
                 mesh=None, data_dir: str | None = None, max_images: int | None = None, num_vis: int | None = None,
                 log: Callable[[str], None] = print, data_fn: Callable[[], Any] | None = None):
        from beltcrack_jax.models import build_model

        ev = config.eval
        self.config = config
        self.profile = profile if isinstance(profile, Profile) else profile_from_config(config, profile)
        self.split = split or ev.split or config.data.test_split
        self.model = model if model is not None else build_model(config)
        self.mesh = mesh
        self.data_dir = data_dir
        self.max_images = int(ev.max_images if max_images is None else max_images)
        self.num_vis = int(ev.num_vis if num_vis is None else num_vis)
        self.batch_size = int(ev.batch_size)
        self.use_ema = bool(ev.use_ema)
        self.backend = ev.coco_backend
        self.method = ev.nms_method
        self.log = log
        self.data_fn = data_fn

    def _predict(self, variables, clips, resize, orig_hw, conf, nms_thr):
        dets, smap, _ = predict_step(variables, clips, resize, orig_hw, conf, nms_thr, model=self.model,
                                     max_detections=self.profile.max_detections, method=self.method)
        return dets, smap

    def _batches(self):
        if self.data_fn is not None:
            return self.data_fn()
        from beltcrack_jax.data import pipeline

        pc, pi = jax.process_count(), jax.process_index()
        if self.batch_size % pc:
            raise ValueError(f"eval.batch_size={self.batch_size} is not divisible by the process count {pc}")
        return pipeline.make_eval_iterator(self.config, self.split, process_index=pi, process_count=pc,
                                           batch_size_per_process=self.batch_size // pc, data_dir=self.data_dir,
                                           key_frames="annotated" if self.profile.annotated_only else "labelled",
                                           resize="letterbox" if self.profile.letterbox else "stretch")

    def _device_batch(self, batch):
        keys = ("clips", "resize", "orig_hw")
        host = {k: np.asarray(batch[k]) for k in keys}
        if self.mesh is not None and host["clips"].shape[0] % max(1, len(self.mesh.local_devices)) == 0:
            from beltcrack_jax.train import sharding

            return sharding.global_batch(host, self.mesh)
        return {k: jnp.asarray(v) for k, v in host.items()}

    @staticmethod
    def _host(x):
        """Device outputs or host metadata of this process -> numpy of the whole (global) batch."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    def _gather_meta(self, batch, key):
        return self._host(np.asarray(batch[key]))

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
        gt = index.coco_ground_truth(np.asarray(run_records))
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
