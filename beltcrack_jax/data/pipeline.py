"""grain clip pipeline over `tfds.data_source('beltcrack/...')` (spec §3): static-shape batches of T-frame clips.

Clip rule (`pipeline_io.npz:clip_rule`): key frame n -> frames max(n-k, 0) for k = T-1..0, oldest first, key last.
With one record per frame ordered by (sequence, frame), that is record max(i-k, sequence_start[i]).
T = config.model.num_frames (nothing else sets it).

Batch (numpy, leading dim B = batch_size_per_process):
  clips     uint8   (B, T, H, W, 3)  RGB, model input pixels (normalise on device with `normalize`)
  boxes     float32 (B, max_boxes, 4) cx, cy, w, h in input pixels (reference box transform, spec §4)
  classes   int32   (B, max_boxes)   class index (0 = crack); 0 where padded
  box_mask  bool    (B, max_boxes)   True for real boxes
  valid     bool    (B,)             False for padding clips (eval only; all True in training)
  image_id  int64   (B,)             COCO image id of the key frame (-1: unannotated frame or padding)
  record_index int64 (B,)            key frame's record index in the split (-1: padding)
  orig_hw   int32   (B, 2)           original (H, W) of the key frame
  resize    int32   (B, 5)           [nw, nh, dx, dy, flip]: input x = orig x * nw / W_orig + dx (see transforms)

Determinism: a batch is a pure function of (seed, step): epoch e = step // steps_per_epoch; within an epoch the
key frames are permuted with a Feistel permutation seeded by (seed, e) and dealt round-robin to processes
(global position g = q*process_count + process_index), so process shards are disjoint; augmentations are drawn
from (seed, epoch, key record). Batches do not depend on num_workers / num_threads. Each epoch has
steps_per_epoch = n_keys // (B * process_count) batches per process (drop-last, as the reference's DataLoader).
The iterator state (grain) is checkpointable with orbax: `grain.checkpoint.CheckpointSave(iterator)`.

Bad input: opening a split (re)builds it if missing with the release checks of `layout.read_layout`
(`config.data.skip_invalid` = the builder's skip_invalid), refuses a build whose release folder changed since
(`DatasetError` with the rebuild command) and checks every record file is complete; a record that cannot be read
later names its shard file. `info['fingerprint']` of the training split is saved with each checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any

import numpy as np

from beltcrack_jax.data import record_files
from beltcrack_jax.data import transforms as tr
from beltcrack_jax.data.errors import DatasetError, rebuild_command
from beltcrack_jax.data.fingerprint import dataset_fingerprint
from beltcrack_jax.data.transforms import normalize, normalize_np  # noqa: F401  (re-exported)

KEY_FRAME_MODES = ("annotated", "labelled", "all")
CONDITION_TAGS = ("view", "light", "weather", "speed")   # per-sequence tags of the release
_HUGE_EPOCHS = 10**6


# -------------------------------------------------------------------------------------------------------------
# split index (from the builder's metadata: no image is read)


@dataclasses.dataclass(frozen=True)
class SplitIndex:
    """Per-record index of one split (everything but the pixels)."""

    split: str
    sequences: list[dict]
    sequence_id: np.ndarray       # (N,) int32
    frame_index: np.ndarray       # (N,) int32
    image_id: np.ndarray          # (N,) int64, -1 = not in the json
    annotated: np.ndarray         # (N,) bool: ground truth known (listed in the json)
    height: np.ndarray            # (N,) int32 original
    width: np.ndarray
    num_boxes: np.ndarray         # (N,) int32
    box_offset: np.ndarray        # (N+1,) int64 into boxes/labels
    boxes: np.ndarray             # (total, 4) float64 COCO xywh original px
    labels: np.ndarray            # (total,) int32
    file_name: list[str]

    @property
    def num_records(self) -> int:
        return len(self.frame_index)

    @functools.cached_property
    def sequence_start(self) -> np.ndarray:
        starts = np.asarray([s["start"] for s in self.sequences], np.int64)
        return starts[self.sequence_id]

    @functools.cached_property
    def sequence_length(self) -> np.ndarray:
        lengths = np.asarray([s["length"] for s in self.sequences], np.int64)
        return lengths[self.sequence_id]

    def clip_indices(self, key: int, num_frames: int) -> np.ndarray:
        """Record indices of the clip of key record `key`, oldest first: max(key - k, sequence start)."""
        return clip_record_indices(key, int(self.sequence_start[key]), num_frames)

    def key_frames(self, mode: str = "annotated") -> np.ndarray:
        """Record indices usable as key frames, ascending.

        'annotated' = frames with at least one box (the reference: `coco_to_txt.py` lists only images with
        annotations, `vid_map_coco.py` evaluates only those); 'labelled' = every frame with known ground truth,
        i.e. also annotated negatives (frames in the json without boxes); 'all' = every frame (unannotated frames
        get no boxes: only for training with negatives when the json lists all frames).
        """
        if mode == "annotated":
            m = self.annotated & (self.num_boxes > 0)
        elif mode == "labelled":
            m = self.annotated.copy()
        elif mode == "all":
            m = np.ones(self.num_records, bool)
        else:
            raise ValueError(f"key_frames must be one of {KEY_FRAME_MODES}, got {mode!r}")
        return np.flatnonzero(m).astype(np.int64)

    def frame_boxes(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.box_offset[i], self.box_offset[i + 1]
        return self.boxes[a:b], self.labels[a:b]

    def coco_ground_truth(self, records=None) -> dict:
        """COCO dict of the split's annotated frames (ids, sizes, boxes exactly as in the release json), or of
        those among `records` (record indices). Images also carry `sequence`, `frame_index`, `record_index` and
        the sequence's condition tags (`CONDITION_TAGS`), which the deployment and per-condition metrics read."""
        recs = np.flatnonzero(self.annotated) if records is None else np.asarray(records, np.int64)
        images, anns = [], []
        for i in (int(r) for r in recs):
            if not self.annotated[i]:
                continue
            seq = self.sequences[int(self.sequence_id[i])]
            im = dict(id=int(self.image_id[i]), file_name=self.file_name[i], width=int(self.width[i]),
                      height=int(self.height[i]), sequence=seq.get("name", str(self.sequence_id[i])),
                      frame_index=int(self.frame_index[i]), record_index=i)
            im.update({k: str(seq.get(k, "") or "") for k in CONDITION_TAGS})
            images.append(im)
            for box, lab in zip(*self.frame_boxes(i)):
                x, y, w, h = (float(v) for v in box)
                anns.append(dict(id=len(anns) + 1, image_id=im["id"], category_id=int(lab) + 1,
                                 bbox=[x, y, w, h], area=w * h, iscrowd=0))
        ncat = int(self.labels.max()) + 1 if len(self.labels) else 1
        cats = [dict(id=1, name="crack")] + [dict(id=c + 1, name=f"class{c}") for c in range(1, ncat)]
        return dict(images=images, annotations=anns, categories=cats)


def clip_record_indices(key: int, sequence_start: int, num_frames: int) -> np.ndarray:
    """[max(key - k, sequence_start) for k = T-1, ..., 0] (the reference's clamp-at-frame-0 rule)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if key < sequence_start:
        raise ValueError(f"key record {key} lies before its sequence start {sequence_start}")
    k = np.arange(num_frames - 1, -1, -1, dtype=np.int64)
    return np.maximum(key - k, sequence_start)


def split_index_from_metadata(md: dict, split: str) -> SplitIndex:
    splits = md.get("splits") if md else None
    if not splits or split not in splits:
        raise ValueError(f"split {split!r} not in the dataset's metadata (available: {sorted(splits or [])}); "
                         f"was it built by beltcrack_jax.data.tfds_beltcrack?")
    s = splits[split]
    nb = np.asarray(s["num_boxes"], np.int32)
    off = np.concatenate([[0], np.cumsum(nb, dtype=np.int64)])
    return SplitIndex(
        split=split, sequences=list(s["sequences"]),
        sequence_id=np.asarray(s["sequence_id"], np.int32), frame_index=np.asarray(s["frame_index"], np.int32),
        image_id=np.asarray(s["image_id"], np.int64), annotated=np.asarray(s["annotated"], bool),
        height=np.asarray(s["height"], np.int32), width=np.asarray(s["width"], np.int32), num_boxes=nb,
        box_offset=off, boxes=np.asarray(s["boxes"], np.float64).reshape(-1, 4),
        labels=np.asarray(s["labels"], np.int32), file_name=list(s["file_name"]),
    )


def open_source(name: str, split: str, data_dir: str | None, *, prepare: bool = True, skip_invalid: bool = False,
                verify: bool | None = None):
    """(ArrayRecord data source with undecoded image bytes, SplitIndex). Builds the dataset first if `prepare` and
    it is missing (synthetic configs generate their frames; real releases need the manual download), refusing an
    existing build whose release changed since. `verify` (default: `prepare`) checks every record file is whole."""
    import tensorflow_datasets as tfds

    import beltcrack_jax.data  # noqa: F401  (registers the builder)
    from beltcrack_jax.data.build import make_builder
    from beltcrack_jax.data.tfds_beltcrack.beltcrack_dataset_builder import seeded_config

    if any(c in split for c in "[]+"):
        raise ValueError(f"split must be a plain split name (clips need whole sequences), got {split!r}")
    full_name = name
    kwargs = {}
    builder_name, _, config_name = name.partition("/")
    seeded = seeded_config(config_name) if builder_name == "beltcrack" else None
    if seeded is not None:   # synthetic_<preset>_seed<N>: built from a config object (not a registered name)
        name, kwargs = builder_name, {"builder_kwargs": {"config": seeded}}
    if prepare:  # builds if missing; tfds.data_source alone would serve a stale build without a word
        make_builder(full_name, data_dir, skip_invalid=skip_invalid).download_and_prepare()
    src = tfds.data_source(name, split=split, data_dir=data_dir, download=prepare,
                           decoders={"image": tfds.decode.SkipDecoding()}, **kwargs)
    index = split_index_from_metadata(src.dataset_info.metadata, split)
    if len(src) != index.num_records:
        raise ValueError(f"{name}/{split}: {len(src)} records but the metadata indexes {index.num_records}")
    if prepare if verify is None else verify:
        record_files.verify_record_files(src.dataset_info, split, full_name, data_dir)
    return src, index


def load_split_index(name: str, split: str, data_dir: str | None = None) -> SplitIndex:
    """SplitIndex of a built dataset (for evaluators: ground truth without reading frames)."""
    return open_source(name, split, data_dir, prepare=False)[1]


# -------------------------------------------------------------------------------------------------------------
# clip loading


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    num_frames: int
    image_hw: tuple[int, int]
    resize: str
    max_boxes: int
    decoder: str = "pil"
    flip: bool = False
    hsv: bool = False
    scale_jitter: bool = False
    hsv_gains: tuple[float, float, float] = (0.015, 0.7, 0.4)
    scale_range: tuple[float, float] = (0.75, 1.25)

    @property
    def augment(self) -> bool:
        return self.flip or self.hsv or self.scale_jitter


class FrameCache:
    """Decoded, resized (not yet flipped or colour-jittered) frames by (record, resize geometry), filled until
    `max_bytes` and never evicted: a small dataset is decoded once instead of once per clip it appears in (each
    frame is in T clips) and per epoch. The cached path returns the same pixels as decoding (flip and HSV still
    apply per clip). Thread-safe for grain's read threads; each worker process fills its own."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes, self.hits, self.misses = int(max_bytes), 0, 0, 0
        self._frames: dict = {}
        self._lock = threading.Lock()

    def get(self, key):
        f = self._frames.get(key)
        with self._lock:
            if f is None:
                self.misses += 1
            else:
                self.hits += 1
        return f

    def put(self, key, frame: np.ndarray) -> None:
        with self._lock:
            if key not in self._frames and self.bytes + frame.nbytes <= self.max_bytes:
                frame.setflags(write=False)   # shared by every clip that uses it
                self._frames[key] = frame
                self.bytes += frame.nbytes


class ClipLoader:
    """(key record, epoch, valid) items -> one batch dict. Picklable: the data source is reopened lazily.
    `cache_bytes` > 0: decoded frames are kept (`FrameCache`) up to that many bytes per process."""

    def __init__(self, name: str, split: str, data_dir: str | None, spec: ClipSpec, seed: int, index=None,
                 source=None, cache_bytes: int = 0):
        self.name, self.split, self.data_dir, self.spec, self.seed = name, split, data_dir, spec, int(seed)
        self._index = index
        self._source = source
        self.cache_bytes = int(cache_bytes)
        self._cache = FrameCache(self.cache_bytes) if self.cache_bytes > 0 else None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_source"] = None
        d["_cache"] = None   # a worker process builds its own
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._cache = FrameCache(self.cache_bytes) if self.cache_bytes > 0 else None

    def _frame(self, i: int, rec, params: tr.ResizeParams) -> np.ndarray:
        if self._cache is None:
            return tr.load_frame(rec["image"], params, decoder=self.spec.decoder)
        key = (i, dataclasses.replace(params, flip=False))
        f = self._cache.get(key)
        if f is None:
            f = tr.load_frame(rec["image"], key[1], decoder=self.spec.decoder)
            self._cache.put(key, f)
        return np.ascontiguousarray(f[:, ::-1]) if params.flip else f

    def _open(self):
        if self._source is None or self._index is None:
            self._source, self._index = open_source(self.name, self.split, self.data_dir, prepare=False)
        return self._source, self._index

    def _read(self, source, records: list[int]) -> list:
        getitems = getattr(source, "__getitems__", None)
        try:
            return getitems(records) if getitems is not None else [source[i] for i in records]
        except (RuntimeError, OSError) as e:  # Riegeli / file errors name no file: name it
            info = getattr(source, "dataset_info", None)
            where = f"record file {record_files.shard_of(info, self.split, records[0])}" if info else "its records"
            raise DatasetError(f"{self.name}/{self.split}: cannot read records {records} from {where} "
                               f"({type(e).__name__}: {str(e)[:300]}). Rebuild the dataset with:\n  "
                               + rebuild_command(self.name, self.data_dir)) from e

    def empty(self) -> dict[str, np.ndarray]:
        s = self.spec
        h, w = s.image_hw
        return dict(
            clips=np.zeros((s.num_frames, h, w, 3), np.uint8),
            boxes=np.zeros((s.max_boxes, 4), np.float32), classes=np.zeros((s.max_boxes,), np.int32),
            box_mask=np.zeros((s.max_boxes,), bool), valid=np.asarray(False),
            image_id=np.asarray(-1, np.int64), record_index=np.asarray(-1, np.int64),
            orig_hw=np.zeros((2,), np.int32), resize=np.zeros((5,), np.int32),
        )

    def load_clip(self, key: int, epoch: int) -> dict[str, np.ndarray]:
        source, index = self._open()
        s = self.spec
        idx = index.clip_indices(int(key), s.num_frames)
        uniq = sorted(set(int(i) for i in idx))
        recs = self._read(source, uniq)
        by_idx = dict(zip(uniq, recs))
        aug = tr.ClipAugment()
        if s.augment:
            rng = np.random.default_rng([self.seed, int(epoch), int(key)])
            aug = tr.draw_augment(rng, flip=s.flip, hsv=s.hsv, scale_jitter=s.scale_jitter,
                                  hsv_gains=s.hsv_gains, scale_range=s.scale_range)

        def params_for(rec) -> tr.ResizeParams:
            p = tr.resize_params(s.resize, (int(rec["height"]), int(rec["width"])), s.image_hw,
                                 scale_factor=aug.scale_factor, offset_frac=aug.offset_frac)
            return dataclasses.replace(p, flip=aug.flip)

        frames = {}
        for i, rec in by_idx.items():
            f = self._frame(i, rec, params_for(rec))
            if aug.hsv_gains is not None:
                f = tr.apply_hsv(f, aug.hsv_gains)
            frames[i] = f
        clip = np.stack([frames[int(i)] for i in idx])

        key_rec = by_idx[int(key)]
        p = params_for(key_rec)
        boxes_xywh, labels = key_rec["boxes"], key_rec["labels"]
        cxcywh, labels = tr.transform_boxes(tr.coco_to_xyxy_int(boxes_xywh), labels, p)
        n = len(cxcywh)
        if n > s.max_boxes:
            raise ValueError(f"{index.file_name[int(key)]} has {n} boxes after the transform, more than "
                             f"max_boxes = {s.max_boxes}; raise config.data.max_boxes")
        out = self.empty()
        out.update(clips=clip, valid=np.asarray(True), image_id=np.asarray(int(key_rec["image_id"]), np.int64),
                   record_index=np.asarray(int(key), np.int64),
                   orig_hw=np.asarray([int(key_rec["height"]), int(key_rec["width"])], np.int32),
                   resize=p.as_array())
        out["boxes"][:n] = cxcywh
        out["classes"][:n] = labels
        out["box_mask"][:n] = True
        return out

    def __call__(self, items) -> dict[str, np.ndarray]:
        """items: sequence of (key record, epoch, valid) -> stacked batch."""
        clips = [self.load_clip(k, e) if v else self.empty() for k, e, v in items]
        return {k: np.stack([c[k] for c in clips]) for k in clips[0]}


# -------------------------------------------------------------------------------------------------------------
# samplers (pure index arithmetic)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(1)[0])


def permuted_position(g: int, n: int, seed: int, epoch: int, shuffle: bool) -> int:
    """Position in the key-frame list of global slot g of `epoch` (a bijection of range(n) per epoch)."""
    if not shuffle or n == 1:
        return g
    import grain

    return int(grain.experimental.index_shuffle(g, max_index=n - 1, seed=_epoch_seed(seed, epoch), rounds=4))


@dataclasses.dataclass(frozen=True)
class TrainSampler:
    """Batch b of process p: items of epoch e = b // steps_per_epoch (see module docstring)."""

    keys: np.ndarray
    batch_size: int
    process_index: int
    process_count: int
    seed: int
    shuffle: bool

    @property
    def steps_per_epoch(self) -> int:
        return len(self.keys) // (self.batch_size * self.process_count)

    def __call__(self, b: int):
        e, r = divmod(int(b), self.steps_per_epoch)
        n = len(self.keys)
        out = []
        for j in range(self.batch_size):
            q = r * self.batch_size + j
            g = q * self.process_count + self.process_index
            out.append((int(self.keys[permuted_position(g, n, self.seed, e, self.shuffle)]), e, True))
        return out


@dataclasses.dataclass(frozen=True)
class EvalSampler:
    """Process p gets keys[p::P]; every process yields the same number of batches (padding items invalid)."""

    keys: np.ndarray
    batch_size: int
    process_index: int
    process_count: int

    @property
    def num_batches(self) -> int:
        per_proc = -(-len(self.keys) // self.process_count)
        return max(1, -(-per_proc // self.batch_size))

    def __call__(self, b: int):
        mine = self.keys[self.process_index :: self.process_count]
        out = []
        for j in range(self.batch_size):
            q = int(b) * self.batch_size + j
            out.append((int(mine[q]), 0, True) if q < len(mine) else (-1, 0, False))
        return out


# -------------------------------------------------------------------------------------------------------------
# config -> iterators


@functools.cache
def _default_data():
    from beltcrack_jax.configs import default

    return default.get_config().data


def _data(config, key: str):
    """config.data.<key>. A hand-built config without the field gets configs/default.py's value: the defaults
    live in that one file, not in the readers."""
    d = config.data
    return d[key] if key in d else _default_data()[key]


def _augment(config) -> dict:
    """config.data.augment with default.py's values for the fields a partial override leaves out."""
    aug = _data(config, "augment")
    return {**_default_data().augment.to_dict(), **(aug.to_dict() if hasattr(aug, "to_dict") else dict(aug))}


def clip_spec(config, *, train: bool, resize: str | None = None) -> ClipSpec:
    """`resize`: the evaluation profile's mode, instead of `config.data.eval_resize`."""
    aug = _augment(config) if train else dict(flip=False, hsv=False, scale_jitter=False)
    if resize is None:
        resize = _data(config, "train_resize" if train else "eval_resize")
    if resize not in tr.RESIZE_MODES:
        raise ValueError(f"config.data.{'train' if train else 'eval'}_resize must be one of {tr.RESIZE_MODES}, "
                         f"got {resize!r}")
    decoder = _data(config, "decoder")
    if decoder not in tr.DECODERS:
        raise ValueError(f"config.data.decoder must be one of {tr.DECODERS}, got {decoder!r}")
    return ClipSpec(
        num_frames=int(config.model.num_frames), image_hw=tr.as_hw(_data(config, "image_size")), resize=resize,
        max_boxes=int(_data(config, "max_boxes")), decoder=decoder,
        flip=bool(aug["flip"]), hsv=bool(aug["hsv"]), scale_jitter=bool(aug["scale_jitter"]),
        **({"hsv_gains": tuple(aug["hsv_gains"]), "scale_range": tuple(aug["scale_range"])} if train else {}),
    )


def _check_index(index: SplitIndex, keys: np.ndarray, spec: ClipSpec, name: str, split: str, skip_invalid: bool,
                 num_classes: int | None = None):
    short = index.sequence_length[keys] < spec.num_frames if len(keys) else np.zeros(0, bool)
    if short.any():
        seqs = sorted({index.sequences[int(index.sequence_id[k])]["name"] for k in keys[short]})
        msg = (f"{name}/{split}: {len(seqs)} sequence(s) shorter than T = {spec.num_frames} frames: "
               f"{seqs[:10]}{' ...' if len(seqs) > 10 else ''}")
        if not skip_invalid:
            raise ValueError(msg + " (config.data.skip_invalid=True drops their key frames)")
        print(f"{msg}: dropping {int(short.sum())} key frame(s) (skip_invalid)")
        keys = keys[~short]
    if len(keys) == 0:
        raise ValueError(f"{name}/{split} has no key frames")
    nb = index.num_boxes[keys]
    if nb.max(initial=0) > spec.max_boxes:
        k = int(keys[int(np.argmax(nb))])
        raise ValueError(f"{name}/{split}: frame {index.file_name[k]} has {int(nb.max())} boxes, more than "
                         f"config.data.max_boxes = {spec.max_boxes}")
    if num_classes is not None and len(index.labels) and int(index.labels.max()) >= num_classes:
        i = int(np.searchsorted(index.box_offset, int(np.argmax(index.labels)), side="right")) - 1
        raise ValueError(f"{name}/{split}: frame {index.file_name[i]} has a box of category_id "
                         f"{int(index.labels.max()) + 1}, but config.model.num_classes = {num_classes} allows "
                         f"category ids 1..{num_classes}")
    return keys


def _cache_bytes(config) -> int:
    mb = _data(config, "frame_cache_mb")
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or mb < 0:
        raise ValueError(f"config.data.frame_cache_mb must be a number of MiB >= 0 (0 = no cache), got {mb!r}")
    return int(mb * 2**20)


def _num_classes(config) -> int | None:
    n = config.model.get("num_classes")   # a hand-built config without it: no class-id check
    return int(n) if n is not None else None


def _resolve(config, split, data_dir):
    name = _data(config, "name")
    if not name:
        raise ValueError("config.data.name is not set (e.g. 'beltcrack/synthetic_demo')")
    data_dir = data_dir if data_dir is not None else _data(config, "data_dir")
    return name, split, data_dir


def _finish(loader, config, sampler_len: int):
    import grain

    ds = grain.MapDataset.range(sampler_len).map(loader)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(_data(config, "num_threads")),
                                              prefetch_buffer_size=int(_data(config, "prefetch"))))
    workers = int(_data(config, "num_workers"))
    if workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain reads absl flags in its workers; scripts without absl.app
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                          per_worker_buffer_size=int(_data(config, "prefetch"))))
    return ds


class _Compose:
    def __init__(self, sampler, loader):
        self.sampler, self.loader = sampler, loader

    def __call__(self, b):
        return self.loader(self.sampler(b))


def make_train_dataset(config, split: str | None = None, *, process_index: int = 0, process_count: int = 1,
                       batch_size_per_process: int, seed: int | None = None, data_dir: str | None = None,
                       num_epochs: int | None = None):
    """grain IterDataset of training batches (see module docstring). Returns (dataset, info dict)."""
    split = split or _data(config, "train_split")
    name, split, data_dir = _resolve(config, split, data_dir)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    if batch_size_per_process < 1:
        raise ValueError(f"batch_size_per_process must be >= 1, got {batch_size_per_process}")
    seed = int(config.seed if seed is None else seed)
    spec = clip_spec(config, train=True)
    skip_invalid = bool(_data(config, "skip_invalid"))
    src, index = open_source(name, split, data_dir, prepare=bool(_data(config, "prepare")),
                             skip_invalid=skip_invalid)
    keys = _check_index(index, index.key_frames(_data(config, "key_frames")), spec, name,
                        split, skip_invalid, _num_classes(config))
    sampler = TrainSampler(keys=keys, batch_size=batch_size_per_process, process_index=process_index,
                           process_count=process_count, seed=seed, shuffle=bool(_data(config, "shuffle")))
    if sampler.steps_per_epoch == 0:
        raise ValueError(f"{name}/{split}: {len(keys)} key frames are fewer than one global batch "
                         f"({batch_size_per_process} x {process_count} processes)")
    loader = ClipLoader(name, split, data_dir, spec, seed, index=index, source=src,
                        cache_bytes=_cache_bytes(config))
    total = sampler.steps_per_epoch * (num_epochs if num_epochs is not None else _HUGE_EPOCHS)
    ds = _finish(_Compose(sampler, loader), config, total)
    info = dict(name=name, split=split, num_key_frames=len(keys), steps_per_epoch=sampler.steps_per_epoch,
                spec=spec, index=index, fingerprint=dataset_fingerprint(src.dataset_info.metadata, split))
    return ds, info


def make_train_iterator(config, split: str | None = None, *, process_index: int = 0, process_count: int = 1,
                        batch_size_per_process: int, seed: int | None = None, data_dir: str | None = None,
                        num_epochs: int | None = None):
    """Iterator of training batches (infinite unless num_epochs). Checkpoint it with
    `grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)` in an orbax Composite (or get_state/set_state).
    Batch b belongs to epoch b // steps_per_epoch; `it.info` carries steps_per_epoch and the SplitIndex."""
    ds, info = make_train_dataset(config, split, process_index=process_index, process_count=process_count,
                                  batch_size_per_process=batch_size_per_process, seed=seed, data_dir=data_dir,
                                  num_epochs=num_epochs)
    it = iter(ds)
    it.info = info
    return it


def make_eval_dataset(config, split: str, *, process_index: int = 0, process_count: int = 1,
                      batch_size_per_process: int, data_dir: str | None = None, key_frames: str | None = None,
                      resize: str | None = None):
    """Dataset of `make_eval_iterator`; `key_frames` / `resize` override `config.data.eval_key_frames` /
    `config.data.eval_resize` (the evaluation profile passes its own)."""
    name, split, data_dir = _resolve(config, split, data_dir)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    spec = clip_spec(config, train=False, resize=resize)
    skip_invalid = bool(_data(config, "skip_invalid"))
    src, index = open_source(name, split, data_dir, prepare=bool(_data(config, "prepare")),
                             skip_invalid=skip_invalid)
    mode = key_frames or _data(config, "eval_key_frames")
    keys = _check_index(index, index.key_frames(mode), spec, name, split, skip_invalid, _num_classes(config))
    sampler = EvalSampler(keys=keys, batch_size=batch_size_per_process, process_index=process_index,
                          process_count=process_count)
    loader = ClipLoader(name, split, data_dir, spec, 0, index=index, source=src, cache_bytes=_cache_bytes(config))
    ds = _finish(_Compose(sampler, loader), config, sampler.num_batches)
    info = dict(name=name, split=split, num_key_frames=len(keys), num_batches=sampler.num_batches, spec=spec,
                index=index)
    return ds, info


def make_eval_iterator(config, split: str, *, process_index: int = 0, process_count: int = 1,
                       batch_size_per_process: int, data_dir: str | None = None, key_frames: str | None = None,
                       resize: str | None = None):
    """One pass over every key frame exactly once (over all processes); the last batches are padded with
    valid=False clips. All processes yield the same number of batches (`it.info['num_batches']`)."""
    ds, info = make_eval_dataset(config, split, process_index=process_index, process_count=process_count,
                                 batch_size_per_process=batch_size_per_process, data_dir=data_dir,
                                 key_frames=key_frames, resize=resize)
    it = iter(ds)
    it.info = info
    return it
