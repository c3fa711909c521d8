"""Run BeltCrackDet on a frame sequence: a folder of frames, a TFDS sequence or a video file.

    python -m beltcrack_jax.predict --config configs/default.py --workdir W --input path/to/frames_or_video.mp4 \
        --output_dir out [--mode stream|window] [--save_frames] [--save_video] [--heatmap] [--profile paper]

Clip rule: the detections of frame n come from the window [max(n-k, 0) for k = T-1..0] (oldest first, key frame
last; frame 0 repeated at the start), as the reference's clip loader.

Modes:
* `window`: every frame runs the full model on its T-frame clip (T backbone passes per frame).
* `stream` (default): each frame's backbone features are computed ONCE (`BeltCrackDet.backbone_features`) and
  kept in a ring of the last T feature maps, and only neck + head run per frame (`BeltCrackDet.neck_head`). The
  neck/head see exactly the same inputs as in `window` mode, so the results agree to float tolerance (tested,
  also with bf16 compute and folded BN).
Both modes end in the evaluator's post-processing (`eval/predict_step.py`, `eval/postprocess.detect`).
Outputs in --output_dir: `detections.jsonl` (one line per frame: frame, name, latency_ms, detections [{bbox
[x1,y1,x2,y2] original px, score, obj, class_conf, class}]), `latency.json` (p50/p90/p99/mean per-frame latency; the
step functions are compiled in an untimed warm-up on the first frame), optional annotated PNG frames (`frames/`), an annotated video
(`annotated.mp4`) and a score heat-map overlay (`--heatmap`). Latency = device time per frame from the
preprocessed uint8 frame to detections on the host (backbone + neck + head + decode + NMS); host decoding and
resizing are reported separately (`preprocess_ms`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import re
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from beltcrack_jax.eval import postprocess as pp
from beltcrack_jax.eval.predict_step import predict_step

FRAME_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".webm", ".wmv")


# ------------------------------------------------------------------------------------------------ frame sources


@dataclasses.dataclass
class Frame:
    index: int
    name: str
    rgb: np.ndarray  # (H, W, 3) uint8, original size


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_frame_files(folder: str) -> list[str]:
    """Frame files of a folder, in frame order: integer names (`<n>.jpg`) numerically, else natural sort."""
    if not os.path.isdir(folder):
        raise ValueError(f"frame folder {folder!r} does not exist or is not a directory")
    names = [n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in FRAME_EXTS
             and os.path.isfile(os.path.join(folder, n))]
    if not names:
        raise ValueError(f"frame folder {folder!r} contains no frames (extensions {', '.join(FRAME_EXTS)})")
    return [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]


def iter_folder(folder: str) -> Iterator[Frame]:
    from PIL import Image, UnidentifiedImageError

    for i, path in enumerate(list_frame_files(folder)):
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read frame {path!r}: {e}") from e
        yield Frame(i, os.path.basename(path), rgb)


def iter_video(path: str) -> Iterator[Frame]:
    import cv2

    if not os.path.isfile(path):
        raise ValueError(f"video file {path!r} does not exist")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise ValueError(f"cannot open video file {path!r} with OpenCV (unreadable or unsupported codec)")
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                if i == 0:
                    raise ValueError(f"video file {path!r} yielded no frames (unreadable or empty)")
                return
            yield Frame(i, f"{i:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            i += 1
    finally:
        cap.release()


def iter_tfds(spec: str, data_dir: str | None = None) -> Iterator[Frame]:
    """`<name>:<split>:<sequence>` e.g. `beltcrack/synthetic_tiny:test:seq_003` (sequence name or its index)."""
    from beltcrack_jax.data import pipeline
    from beltcrack_jax.data.transforms import decode_frame

    parts = spec.split(":")
    if len(parts) != 3:
        raise ValueError(f"TFDS input must be '<name>:<split>:<sequence>', got {spec!r}")
    name, split, seq = parts
    src, index = pipeline.open_source(name, split, data_dir, prepare=False)
    names = [s["name"] for s in index.sequences]
    if seq in names:
        sid = names.index(seq)
    elif seq.isdigit() and int(seq) < len(names):
        sid = int(seq)
    else:
        raise ValueError(f"sequence {seq!r} not in {name}/{split} (sequences: {names[:20]})")
    s = index.sequences[sid]
    for k in range(int(s["length"])):
        r = int(s["start"]) + k
        yield Frame(k, index.file_name[r], np.asarray(decode_frame(src[r]["image"])))


def open_source(inp: str, data_dir: str | None = None) -> Iterator[Frame]:
    """A frame iterator for --input: `tfds:<name>:<split>:<sequence>`, a folder of frames or a video file.
    Every frame must have the size of the first (ValueError naming the frame otherwise)."""
    if inp.startswith("tfds:"):
        it = iter_tfds(inp[len("tfds:"):], data_dir)
    elif os.path.isdir(inp):
        it = iter_folder(inp)
    elif os.path.splitext(inp)[1].lower() in VIDEO_EXTS or os.path.isfile(inp):
        it = iter_video(inp)
    else:
        raise ValueError(f"--input {inp!r} is neither a folder of frames, a video file nor tfds:<name>:<split>:<seq>")
    return _check_sizes(it, inp)


def _check_sizes(it: Iterator[Frame], inp: str) -> Iterator[Frame]:
    first = None
    for f in it:
        if f.rgb.ndim != 3 or f.rgb.shape[2] != 3:
            raise ValueError(f"frame {f.name!r} of {inp!r} is not an RGB image (shape {f.rgb.shape})")
        if first is None:
            first = f.rgb.shape[:2]
        elif f.rgb.shape[:2] != first:
            raise ValueError(f"frame {f.name!r} of {inp!r} has size {f.rgb.shape[1]}x{f.rgb.shape[0]} but the "
                             f"sequence started at {first[1]}x{first[0]}; frame sizes must not change mid-sequence")
        yield f


# ------------------------------------------------------------------------------------------------ model pieces


@dataclasses.dataclass
class FrameResult:
    index: int
    name: str
    boxes: np.ndarray        # (n, 4) xyxy original px
    anchor_index: np.ndarray # (n,) row-major anchor of each detection
    scores: np.ndarray
    obj: np.ndarray
    class_conf: np.ndarray
    classes: np.ndarray
    score_map: np.ndarray | None
    latency_ms: float
    preprocess_ms: float
    rgb: np.ndarray | None = None        # the original frame (for drawing)
    raw: np.ndarray | None = None        # (h, w, 5+K) raw head output if keep_raw


class Predictor:
    """Per-frame detection over a sequence with a rolling T-frame window (clamped at the start).

    mode 'window': the full model per frame; 'stream': cached backbone features (each frame's backbone once).
    """

    def __init__(self, model, variables, *, input_hw: tuple[int, int], letterbox: bool, conf_thres: float,
                 nms_thres: float, max_detections: int | None = None, nms_method: str = "auto",
                 keep_raw: bool = False):
        self.model, self.variables = model, variables
        self.t = int(model.num_frames)
        self.input_hw = tuple(int(v) for v in input_hw)
        self.letterbox = letterbox
        self.conf, self.nms_thr = jnp.float32(conf_thres), jnp.float32(nms_thres)
        self.keep_raw = keep_raw
        self.compile_seconds: float | None = None  # set by the first `run` (warm-up, not in the latencies)
        self._static = dict(model=model, max_detections=max_detections, method=nms_method)

    def geometry(self, orig_hw) -> tuple[int, int, int, int]:
        """(nw, nh, dx, dy) of the resized frame on the input canvas."""
        from beltcrack_jax.data import transforms as tr

        p = tr.resize_params("letterbox" if self.letterbox else "stretch", orig_hw, self.input_hw)
        return p.nw, p.nh, p.dx, p.dy

    def preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Original RGB frame -> (uint8 input frame, (5,) resize metadata `[nw, nh, dx, dy, flip]`, (2,) original
        (H, W)) with the reference's PIL BICUBIC resize (letterbox or stretch), as the data pipeline does."""
        from PIL import Image

        from beltcrack_jax.data import transforms as tr

        p = tr.resize_params("letterbox" if self.letterbox else "stretch", rgb.shape[:2], self.input_hw)
        return tr.place_frame(Image.fromarray(rgb), p), p.as_array(), np.asarray(rgb.shape[:2], np.int32)

    def run(self, frames: Iterator[Frame], mode: str = "stream") -> Iterator[FrameResult]:
        """Yields one FrameResult per input frame."""
        if mode not in ("stream", "window"):
            raise ValueError(f"mode must be 'stream' or 'window', got {mode!r}")
        buf: list[jax.Array] = []  # window mode: the last T input frames, on device
        ring = None
        for f in frames:
            t0 = time.perf_counter()
            x, resize, orig_hw = self.preprocess(f.rgb)
            pre_ms = 1e3 * (time.perf_counter() - t0)
            xd, meta = jnp.asarray(x), (jnp.asarray(resize)[None], jnp.asarray(orig_hw)[None], self.conf,
                                        self.nms_thr)
            if self.compile_seconds is None:  # compile every step function once, outside the timed region
                tc = time.perf_counter()
                if mode == "window":
                    jax.block_until_ready(predict_step(self.variables, jnp.stack([xd] * self.t)[None], *meta,
                                                       **self._static))
                else:
                    r0, _ = stream_first(self.variables, xd, *meta, **self._static)
                    jax.block_until_ready(stream_step(self.variables, r0, xd, *meta, **self._static))
                self.compile_seconds = time.perf_counter() - tc
            t1 = time.perf_counter()
            if mode == "window":
                buf = buf[1:] + [xd] if buf else [xd] * self.t  # clamp at the start: frame 0 repeated
                out = predict_step(self.variables, jnp.stack(buf)[None], *meta, **self._static)
            elif ring is None:
                ring, out = stream_first(self.variables, xd, *meta, **self._static)
            else:
                ring, out = stream_step(self.variables, ring, xd, *meta, **self._static)
            dets, smap = jax.device_get(out[:2])
            t2 = time.perf_counter()
            raw = np.asarray(out[2]) if self.keep_raw else None
            v = dets.valid[0]
            yield FrameResult(index=f.index, name=f.name, boxes=dets.boxes[0][v],
                              anchor_index=dets.anchor_index[0][v], scores=dets.scores[0][v], obj=dets.obj[0][v],
                              class_conf=dets.class_conf[0][v], classes=dets.classes[0][v],
                              score_map=smap[0], latency_ms=1e3 * (t2 - t1), preprocess_ms=pre_ms,
                              rgb=f.rgb, raw=raw[0] if raw is not None else None)


_STATIC = ("model", "max_detections", "method")


def _neck_head_detect(variables, ring, input_hw, resize, orig_hw, conf, nms_thr, *, model, max_detections,
                      method):
    from beltcrack_jax.models.detector import BeltCrackDet

    raw = model.apply(variables, ring[None], method=BeltCrackDet.neck_head)
    dets, smap = pp.detect(raw, resize, orig_hw, conf, nms_thr, input_hw=input_hw, max_detections=max_detections,
                           method=method)
    return dets, smap, raw


def _features(variables, frame, model):
    from beltcrack_jax.data.transforms import normalize
    from beltcrack_jax.models.detector import BeltCrackDet

    return model.apply(variables, normalize(frame[None]), method=BeltCrackDet.backbone_features)[0]


@functools.partial(jax.jit, static_argnames=_STATIC)
def stream_step(variables, ring, frame, resize, orig_hw, conf, nms_thr, *, model, max_detections, method):
    """One new uint8 frame (H,W,3): its backbone features enter the ring (T,h,w,C) of cached features (oldest
    dropped), neck + head run on the ring -> (new ring, (Detections, score map, raw))."""
    ring = jnp.concatenate([ring[1:], _features(variables, frame, model)[None]], axis=0)
    return ring, _neck_head_detect(variables, ring, frame.shape[:2], resize, orig_hw, conf, nms_thr, model=model,
                                   max_detections=max_detections, method=method)


@functools.partial(jax.jit, static_argnames=_STATIC)
def stream_first(variables, frame, resize, orig_hw, conf, nms_thr, *, model, max_detections, method):
    """The first frame of a stream: its features fill the whole ring (frame 0 repeated, the clamp rule)."""
    feat = _features(variables, frame, model)
    ring = jnp.broadcast_to(feat[None], (model.num_frames,) + feat.shape)
    return ring, _neck_head_detect(variables, ring, frame.shape[:2], resize, orig_hw, conf, nms_thr, model=model,
                                   max_detections=max_detections, method=method)


def latency_summary(ms: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean/max of per-frame latencies (compilation happens in a warm-up before the first frame)."""
    a = np.asarray(ms, np.float64)
    if a.size == 0:
        return {"frames": 0}
    return {"frames": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "max_ms": float(a.max())}


# ------------------------------------------------------------------------------------------------ CLI


def predict(config, *, inp: str, output_dir: str, workdir: str | None = None, checkpoint: str | None = None,
            variables: dict | None = None, use_ema: bool = True, mode: str = "stream", profile: str | None = None,
            conf: float | None = None, nms: float | None = None, save_frames: bool = False, save_video: bool = False,
            heatmap: bool = False, vis_score: float = 0.3, max_frames: int = 0, fps: float = 25.0,
            data_dir: str | None = None, random_init: bool = False,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Library form of the CLI. Returns {'latency': ..., 'frames': n, 'outputs': {...}}.
    Weights: `variables`, else a checkpoint (workdir / checkpoint; EMA unless use_ema=False), else random
    (`random_init`, smoke tests and latency measurements only)."""
    from beltcrack_jax.data.transforms import as_hw
    from beltcrack_jax.eval import plots
    from beltcrack_jax.eval.evaluator import profile_from_config
    from beltcrack_jax.models import build_model
    from beltcrack_jax.train.checkpoint import load_variables

    src = open_source(inp, data_dir)
    try:  # read the first frame before building anything: bad input fails fast
        first = next(src)
    except StopIteration:
        raise ValueError(f"--input {inp!r} yielded no frames") from None
    src = itertools.chain([first], src)
    model = build_model(config)
    hw = as_hw(config.data.image_size)
    if variables is None and random_init:
        x = jnp.zeros((1, int(model.num_frames)) + hw + (3,))
        variables = jax.jit(lambda k: model.clone(fold_bn=False).init(k, x, train=False))(
            jax.random.key(int(config.seed)))
        if model.fold_bn:
            from beltcrack_jax.models.inference import fold_batchnorm

            variables = fold_batchnorm(variables)
    elif variables is None:
        variables, _ = load_variables(config, workdir=workdir, checkpoint=checkpoint, use_ema=use_ema, model=model,
                                      log=log)
    prof = profile_from_config(config, profile)
    conf = prof.conf_thres if conf is None else conf
    nms = prof.nms_thres if nms is None else nms
    log(f"predict: {prof.describe()} (conf={conf:g} nms_iou={nms:g} used) mode={mode} input={hw[0]}x{hw[1]} "
        f"T={model.num_frames}")
    pred = Predictor(model, variables, input_hw=hw, letterbox=prof.letterbox, conf_thres=conf, nms_thres=nms,
                     max_detections=prof.max_detections,
                     nms_method=config.eval.nms_method)
    os.makedirs(output_dir, exist_ok=True)
    outputs = {"detections": os.path.join(output_dir, "detections.jsonl"),
               "latency": os.path.join(output_dir, "latency.json")}
    writer = None
    lat, pre = [], []
    n = 0
    with open(outputs["detections"], "w") as fj:
        for r in pred.run(src, mode=mode):
            rec = {"frame": r.index, "name": r.name, "latency_ms": round(r.latency_ms, 3),
                   "detections": [{"bbox": [round(float(v), 2) for v in b], "score": float(s), "obj": float(o),
                                   "class_conf": float(c), "class": int(k)}
                                  for b, s, o, c, k in zip(r.boxes, r.scores, r.obj, r.class_conf, r.classes)]}
            fj.write(json.dumps(rec) + "\n")
            lat.append(r.latency_ms)
            pre.append(r.preprocess_ms)
            if save_frames or save_video:
                img = r.rgb
                if heatmap:
                    img = plots.heatmap_overlay(img, r.score_map, pred.geometry(img.shape[:2]), hw)
                keep = r.scores >= vis_score
                img = plots.draw_boxes(img, r.boxes[keep], plots.TP_COLOR, [f"{s:.2f}" for s in r.scores[keep]],
                                       thickness=max(2, img.shape[1] // 400))
                if save_frames:
                    outputs.setdefault("frames", os.path.join(output_dir, "frames"))
                    plots.save_png(os.path.join(output_dir, "frames", f"{os.path.splitext(r.name)[0]}.png"), img)
                if save_video:
                    import cv2

                    if writer is None:
                        outputs["video"] = os.path.join(output_dir, "annotated.mp4")
                        writer = cv2.VideoWriter(outputs["video"], cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                                 (img.shape[1], img.shape[0]))
                    writer.write(np.ascontiguousarray(img[..., ::-1]))
            n += 1
            if max_frames and n >= max_frames:
                break
    if writer is not None:
        writer.release()
    if n == 0:
        raise ValueError(f"--input {inp!r} yielded no frames")
    summary = {"mode": mode, "frames": n, "latency": latency_summary(lat),
               "preprocess_ms_mean": float(np.mean(pre)), "compile_seconds": pred.compile_seconds,
               "backend": jax.default_backend(),
               "device": jax.devices()[0].device_kind, "input_hw": list(hw), "num_frames": int(model.num_frames),
               "conf": conf, "nms": nms, "profile": prof.name}
    with open(outputs["latency"], "w") as f:
        json.dump(summary, f, indent=1)
    L = summary["latency"]
    if L.get("frames"):
        log(f"{n} frames, per-frame latency ({mode}, after a compile warm-up of {pred.compile_seconds:.1f} s): p50 {L['p50_ms']:.2f} ms, p99 "
            f"{L['p99_ms']:.2f} ms, mean {L['mean_ms']:.2f} ms; preprocessing {summary['preprocess_ms_mean']:.2f} ms")
    summary["outputs"] = outputs
    return summary


def main(argv=None):
    from absl import app, flags

    from beltcrack_jax.cli.config_flag import define_config_flag
    from beltcrack_jax.cli.logs import quiet_absl_logging
    from beltcrack_jax.cli.runner import run_main

    define_config_flag("config", "Config the checkpoint was trained with")
    flags.DEFINE_string("workdir", None, "Training workdir (latest checkpoint).")
    flags.DEFINE_string("checkpoint", None, "A checkpoint folder.")
    flags.DEFINE_bool("raw_weights", False, "Use the raw (non-EMA) weights.")
    flags.DEFINE_bool("random_init", False, "Random weights (smoke tests / latency measurements only).")
    flags.DEFINE_string("input", None, "Folder of frames, video file, or tfds:<name>:<split>:<sequence>.")
    flags.DEFINE_string("output_dir", None, "Output folder.")
    flags.DEFINE_enum("mode", "stream", ["stream", "window"], "Cached backbone features or full window per frame.")
    flags.DEFINE_string("profile", None, "Threshold profile (default config.eval.profile).")
    flags.DEFINE_float("conf", None, "Override the profile's confidence threshold.")
    flags.DEFINE_float("nms", None, "Override the profile's NMS IoU threshold.")
    flags.DEFINE_bool("save_frames", False, "Write annotated PNG frames.")
    flags.DEFINE_bool("save_video", False, "Write an annotated MP4.")
    flags.DEFINE_bool("heatmap", False, "Overlay the obj x cls score heat map on written frames.")
    flags.DEFINE_float("vis_score", 0.3, "Score threshold of drawn boxes.")
    flags.DEFINE_integer("max_frames", 0, "Stop after this many frames (0 = all).")
    flags.DEFINE_float("fps", 25.0, "Frame rate of the written video.")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir for tfds: inputs (default config.data.data_dir).")
    FLAGS = flags.FLAGS

    def _main(args):
        if len(args) > 1:
            raise app.UsageError(f"unexpected arguments: {args[1:]}")
        quiet_absl_logging()
        for req in ("config", "input", "output_dir"):
            if getattr(FLAGS, req) is None:
                raise app.UsageError(f"--{req} is required")
        cfg = FLAGS.config
        if not FLAGS.random_init and (FLAGS.workdir is None) == (FLAGS.checkpoint is None):
            raise app.UsageError("give exactly one of --workdir / --checkpoint (or --random_init)")
        data_dir = cfg.data.data_dir if FLAGS.data_dir is None else FLAGS.data_dir
        predict(cfg, inp=FLAGS.input, output_dir=FLAGS.output_dir, workdir=FLAGS.workdir,
                checkpoint=FLAGS.checkpoint, random_init=FLAGS.random_init, use_ema=not FLAGS.raw_weights,
                mode=FLAGS.mode,
                profile=FLAGS.profile, conf=FLAGS.conf, nms=FLAGS.nms, save_frames=FLAGS.save_frames,
                save_video=FLAGS.save_video, heatmap=FLAGS.heatmap, vis_score=FLAGS.vis_score,
                max_frames=FLAGS.max_frames, fps=FLAGS.fps, data_dir=data_dir)

    run_main(_main, __name__, argv)


if __name__ == "__main__":
    main()
