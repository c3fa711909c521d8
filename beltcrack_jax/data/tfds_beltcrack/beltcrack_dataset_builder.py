"""TFDS builder `beltcrack`: BeltCrack frames as ArrayRecord, one record per frame, readable without TensorFlow.

Configs:
  beltcrack14ks, beltcrack9kd      the user's extracted download (TFDS manual_dir, see MANUAL_DOWNLOAD_INSTRUCTIONS)
  synthetic_tiny, synthetic_demo,  generated on the fly by `beltcrack_jax.data.synthetic.generate(preset, ...)`
  synthetic_ambiguous, synthetic_veiled, synthetic_14ks_like, synthetic_9kd_like
  synthetic_<preset>_seed<N>       the same presets generated with seed N (`seeded_config`; the registered ones use 0)

Records of a split are ordered by (sequence, frame) and each sequence's frames are contiguous, so the clip of
record i is `[max(i - k, sequence_start[i]) for k = T-1..0]` (index arithmetic, no frame stored twice). Fields:

  image            encoded JPEG bytes, verbatim from the release (re-encoded only if `storage_max_side` is set)
  image_id         COCO image id (int64), -1 for frames that are not in the json (unannotated history frames)
  annotated        True when the frame's ground truth is known (listed in the json; zero boxes = negative)
  boxes            (n, 4) float64 COCO [x, y, w, h] in ORIGINAL pixels, exactly as in the json
  labels           (n,) int32 class index = category_id - 1
  file_name, sequence (name = directory relative to ROOT), sequence_id (index within the split),
  frame_index (n of <n>.jpg), sequence_start (record index of the sequence's first record in the split),
  sequence_length, height / width (ORIGINAL frame size), view, light, weather, speed (condition tags, '' if unknown)

`info.metadata['splits'][split]` holds the same per-record index (everything except the image bytes) so the
pipeline and the evaluator can find key frames and ground truth without reading the images.
Build-time checks = `beltcrack_jax.data.layout.read_layout` (raise on any problem; `skip_invalid=True` builder
kwarg skips and counts, the counts are in `info.metadata['report']`). `info.metadata['release_fingerprint']` records
the release folder the records were built from; `download_and_prepare` on an existing build refuses a release that
has changed since (`DatasetError` with the command that rebuilds) instead of serving stale records.
"""

from __future__ import annotations

import io
import os
import re
import shutil

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from beltcrack_jax.data import fingerprint
from beltcrack_jax.data import layout as layout_lib
from beltcrack_jax.data.errors import DatasetError, rebuild_command

# Bump when a build's content changes for the same config (e.g. a synthetic preset): TFDS then rebuilds instead
# of serving the old records.
VERSION = "1.3.0"
RELEASES = {"beltcrack14ks": "BeltCrack14ks", "beltcrack9kd": "BeltCrack9kd"}
SYNTHETIC = {"synthetic_tiny": "tiny", "synthetic_learn": "learn", "synthetic_demo": "demo",
             "synthetic_ambiguous": "ambiguous", "synthetic_veiled": "veiled",
             "synthetic_14ks_like": "14ks-like", "synthetic_9kd_like": "9kd-like"}
_SEEDED = re.compile(r"^(?P<base>synthetic_[a-z0-9_]+?)_seed(?P<seed>\d+)$")


def seeded_config(config_name: str) -> "BeltCrackConfig | None":
    """The config `synthetic_<preset>_seed<N>`: the same preset generated with seed N (a fresh draw of belts,
    cracks and conditions, e.g. to test a trained model on data it never saw); None for any other name."""
    m = _SEEDED.match(config_name)
    if not m or m["base"] not in SYNTHETIC:
        return None
    return BeltCrackConfig(name=config_name, synthetic_preset=SYNTHETIC[m["base"]], synthetic_seed=int(m["seed"]),
                           description=f"synthetic data, preset {SYNTHETIC[m['base']]!r}, seed {m['seed']}")

_MANUAL = """\
The BeltCrack releases cannot be downloaded automatically. Download BeltCrack14ks and/or BeltCrack9kd from the
links in https://github.com/UESTC-nnLab/BeltCrack, extract them, and place (or symlink) each extracted release
folder under the TFDS manual dir, which is `<data_dir>/downloads/manual/` (default data_dir of this repo:
`data/tfds`), so that

    <data_dir>/downloads/manual/BeltCrack14ks/annotations/<split>/coco.json
    <data_dir>/downloads/manual/BeltCrack14ks/<file_name of every image>        (e.g. .../train/<seq>/<n>.jpg)
    <data_dir>/downloads/manual/BeltCrack9kd/annotations/<split>/coco.json
    <data_dir>/downloads/manual/BeltCrack9kd/...

Check a release first with `python -m beltcrack_jax.data.validate <data_dir>/downloads/manual/BeltCrack14ks`.
Then build: `tfds.builder('beltcrack/beltcrack14ks', data_dir=<data_dir>).download_and_prepare()`.
"""


class BeltCrackConfig(tfds.core.BuilderConfig):
    """One BeltCrack variant.

    release: folder name under the manual dir (real data); synthetic_preset/synthetic_seed: generated data.
    Storage options (frame geometry fields height/width and boxes always stay in ORIGINAL pixels):
      storage_resize ('letterbox' | 'stretch') + storage_size: store each frame already PIL-BICUBIC-resized the
        way the pipeline would (letterbox: the (nh, nw) image without the canvas), encoded losslessly as PNG
        (storage_format 'png') or as JPEG. With PNG and a pipeline using the same mode/size the pipeline skips the
        resize and its pixels stay bit-identical to the reference, at a fraction of the decode cost.
      storage_max_side: downscale frames whose longer side exceeds it and re-encode as JPEG (lossy, approximate).
    min_sequence_length: build-time check (a sequence shorter than the clip length T is an error).
    """

    def __init__(self, *, release: str | None = None, synthetic_preset: str | None = None, synthetic_seed: int = 0,
                 storage_resize: str | None = None, storage_size=512, storage_format: str = "png",
                 storage_max_side: int | None = None, storage_jpeg_quality: int = 95, min_sequence_length: int = 5,
                 **kwargs):
        kwargs.setdefault("version", tfds.core.Version(VERSION))
        super().__init__(**kwargs)
        if (release is None) == (synthetic_preset is None):
            raise ValueError("exactly one of release / synthetic_preset must be given")
        if storage_resize not in (None, "letterbox", "stretch"):
            raise ValueError(f"storage_resize must be None, 'letterbox' or 'stretch', got {storage_resize!r}")
        if storage_format not in ("png", "jpeg"):
            raise ValueError(f"storage_format must be 'png' or 'jpeg', got {storage_format!r}")
        if storage_resize and storage_max_side:
            raise ValueError("give at most one of storage_resize / storage_max_side")
        self.release = release
        self.synthetic_preset = synthetic_preset
        self.synthetic_seed = int(synthetic_seed)
        self.storage_resize = storage_resize
        self.storage_size = storage_size
        self.storage_format = storage_format
        self.storage_max_side = storage_max_side
        self.storage_jpeg_quality = int(storage_jpeg_quality)
        self.min_sequence_length = int(min_sequence_length)

    @property
    def encoding(self) -> str:
        return "png" if self.storage_resize and self.storage_format == "png" else "jpeg"


def _configs():
    out = [BeltCrackConfig(name=k, release=v, description=f"the {v} release (manual download), original JPEGs")
           for k, v in RELEASES.items()]
    out += [BeltCrackConfig(name=f"{k}_letterbox512", release=v, storage_resize="letterbox", storage_size=512,
                            description=f"the {v} release, frames stored pre-letterboxed for 512x512 training "
                                        f"(lossless PNG; bit-identical to resizing the originals, ~5x faster to read)")
            for k, v in RELEASES.items()]
    out += [BeltCrackConfig(name=k, synthetic_preset=v,
                            description=f"synthetic data, preset {v!r} of beltcrack_jax.data.synthetic, seed 0")
            for k, v in SYNTHETIC.items()]
    return out


class Builder(tfds.core.GeneratorBasedBuilder):
    """BeltCrack sequence frames (one ArrayRecord record per frame)."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "One record per frame, ordered by (sequence, frame); per-record index in metadata.",
                     "1.1.0": "Synthetic 'demo' preset: 150 short sequences (was 16 long ones); 'ambiguous' preset.",
                     "1.2.0": "Synthetic 'demo' / 'ambiguous': one crack per zone, closer zones, no box under 150 "
                              "visible pixels, fewer spill piles on cracks; 'learn' preset.",
                     "1.3.0": "Synthetic 'learn': no transverse cracks (their edge slivers had an uncertain height)."}
    BUILDER_CONFIGS = _configs()
    DEFAULT_CONFIG_NAME = "synthetic_tiny"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS' default resolves the package through `importlib_resources`, which is not installed here.
        return epath.Path(__file__)

    def __init__(self, *, skip_invalid: bool = False, file_format=None, **kwargs):
        self._skip_invalid = bool(skip_invalid)
        super().__init__(file_format=file_format or tfds.core.FileFormat.ARRAY_RECORD, **kwargs)
        self._original_state["skip_invalid"] = self._skip_invalid

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text
        i32 = dict(shape=(), dtype=np.int32)
        return tfds.core.DatasetInfo(
            builder=self,
            description="BeltCrack conveyor-belt crack sequences: one record per frame (encoded JPEG + COCO ground "
                        "truth in original pixels), ordered by (sequence, frame).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format=self.builder_config.encoding),
                "image_id": tfds.features.Scalar(dtype=np.int64),
                "annotated": tfds.features.Scalar(dtype=np.bool_),
                "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float64),
                "labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "file_name": text(),
                "sequence": text(),
                "sequence_id": tfds.features.Tensor(**i32),
                "frame_index": tfds.features.Tensor(**i32),
                "sequence_start": tfds.features.Scalar(dtype=np.int64),
                "sequence_length": tfds.features.Tensor(**i32),
                "height": tfds.features.Tensor(**i32),
                "width": tfds.features.Tensor(**i32),
                **{k: text() for k in layout_lib.TAG_KEYS},
            }),
            homepage="https://github.com/UESTC-nnLab/BeltCrack",
            disable_shuffling=True,  # record order = key order = (sequence, frame): needed for clip index arithmetic
            metadata=tfds.core.MetadataDict(),
        )

    # ------------------------------------------------------------------------------------------------------------
    def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs):
        """TFDS' build; an existing build whose release folder changed since is refused, not served stale."""
        mode = (download_config or tfds.download.DownloadConfig()).download_mode
        if self.is_prepared() and not tfds.download.GenerateMode(mode).overwrite_dataset:
            self._refuse_if_release_changed(download_dir, download_config)
        return super().download_and_prepare(download_dir=download_dir, download_config=download_config, **kwargs)

    def _refuse_if_release_changed(self, download_dir, download_config) -> None:
        stored = (self.info.metadata or {}).get("release_fingerprint")
        root = self._existing_release_root(download_dir, download_config)
        if not stored or root is None:  # built before fingerprints existed, or the release folder is gone
            return
        now = fingerprint.release_fingerprint(root)
        if now["sha256"] != stored["sha256"]:
            name = f"{self.name}/{self.builder_config.name}"
            raise DatasetError(
                f"{name}: the release folder {root} has changed since the records in {self.data_dir} were built "
                f"({fingerprint.describe_difference(stored, now)}), so they are stale. Check it with "
                f"`python -m beltcrack_jax.data.validate {root}`, then rebuild with:\n  "
                + rebuild_command(name, os.fspath(self.data_dir_root), self._skip_invalid))

    def _existing_release_root(self, download_dir, download_config) -> str | None:
        """The release folder a rebuild would read now (else the one the build read), if it still exists."""
        cfg = self.builder_config
        candidates = []
        if cfg.release is not None:
            manual = getattr(download_config, "manual_dir", None) or os.path.join(
                os.fspath(download_dir or os.path.join(os.fspath(self.data_dir_root), "downloads")), "manual")
            candidates.append(os.path.join(os.fspath(manual), cfg.release))
        candidates.append((self.info.metadata or {}).get("source_root"))
        return next((c for c in candidates if c and os.path.isdir(os.path.join(c, "annotations"))), None)

    def _release_root(self, dl_manager) -> str:
        cfg = self.builder_config
        if cfg.release is not None:
            root = os.path.join(os.fspath(dl_manager.manual_dir), cfg.release)
            if not os.path.isdir(os.path.join(root, "annotations")):
                raise FileNotFoundError(f"{root}/annotations not found.\n{_MANUAL}")
            return root
        from beltcrack_jax.data import synthetic  # written by the synthetic-data part of the project

        # The builder version is part of the folder: a new version (a changed preset) generates anew instead of
        # rebuilding records from the frames an older version generated.
        out = os.path.join(os.fspath(dl_manager.download_dir), "beltcrack_synthetic",
                           f"{cfg.synthetic_preset}_seed{cfg.synthetic_seed}_v{VERSION}")
        marker = os.path.join(out, ".complete")
        if os.path.isfile(marker):
            with open(marker) as f:
                root = f.read().strip()
            if os.path.isdir(os.path.join(root, "annotations")):
                return root
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out, exist_ok=True)
        root = os.fspath(synthetic.generate(cfg.synthetic_preset, out, seed=cfg.synthetic_seed))
        with open(marker, "w") as f:
            f.write(root)
        return root

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        root = self._release_root(dl_manager)
        release_fp = fingerprint.release_fingerprint(root)  # taken before the checks: what the records come from
        lay = layout_lib.read_layout(root, min_sequence_length=cfg.min_sequence_length,
                                     skip_invalid=self._skip_invalid)
        report = lay.report
        self.info.metadata["source_root"] = root
        self.info.metadata["release_fingerprint"] = release_fp
        self.info.metadata["report"] = dict(problems=report.counts(), skipped=dict(report.skipped),
                                            info=dict(report.info), messages=[str(p) for p in report.problems[:500]],
                                            dropped_splits=list(report.dropped_splits), notes=list(report.notes))
        if report.problems:
            print(report.format(header=f"beltcrack/{cfg.name}: skipped invalid items (skip_invalid=True)"))
        self.info.metadata["splits"] = {name: _split_index(sp) for name, sp in lay.splits.items()}
        return {name: self._generate_examples(root=root, split=sp) for name, sp in lay.splits.items()}

    def _generate_examples(self, root: str, split):
        cfg = self.builder_config
        i = 0
        for sid, seq in enumerate(split.sequences):
            start = i
            for fr in seq.frames:
                path = os.path.join(root, fr.file_name)
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError as e:  # it passed the checks moments ago: the folder is changing under the build
                    raise DatasetError(f"{path}: cannot read the frame while writing the records ({e}); it was "
                                       f"readable when checked. Is the release still being copied, or on a share "
                                       f"that went away? Run the build again when the folder is complete.") from e
                if cfg.storage_max_side:
                    data = _shrink(data, cfg.storage_max_side, cfg.storage_jpeg_quality)
                elif cfg.storage_resize:
                    data = _presize(data, cfg, (fr.height, fr.width))
                yield i, {
                    "image": data,
                    "image_id": fr.image_id,
                    "annotated": fr.annotated,
                    "boxes": np.asarray(fr.boxes_xywh, np.float64).reshape(-1, 4),
                    "labels": np.asarray(fr.labels, np.int32).reshape(-1),
                    "file_name": fr.file_name,
                    "sequence": seq.name,
                    "sequence_id": sid,
                    "frame_index": fr.number,
                    "sequence_start": start,
                    "sequence_length": len(seq.frames),
                    "height": fr.height,
                    "width": fr.width,
                    **{k: seq.tags.get(k, "") for k in layout_lib.TAG_KEYS},
                }
                i += 1


def _split_index(sp) -> dict:
    """JSON-able per-record index of one split (everything but the pixels; floats round-trip exactly)."""
    frames = [(sid, s, f) for sid, s in enumerate(sp.sequences) for f in s.frames]
    starts, lengths, i = [], [], 0
    for s in sp.sequences:
        starts.append(i)
        lengths.append(len(s.frames))
        i += len(s.frames)
    return dict(
        num_records=len(frames),
        sequences=[dict(name=s.name, start=st, length=ln, **s.tags)
                   for s, st, ln in zip(sp.sequences, starts, lengths)],
        sequence_id=[sid for sid, _, _ in frames],
        frame_index=[f.number for _, _, f in frames],
        image_id=[f.image_id for _, _, f in frames],
        annotated=[int(f.annotated) for _, _, f in frames],
        height=[f.height for _, _, f in frames],
        width=[f.width for _, _, f in frames],
        num_boxes=[len(f.boxes_xywh) for _, _, f in frames],
        boxes=[float(v) for _, _, f in frames for v in np.asarray(f.boxes_xywh, np.float64).reshape(-1)],
        labels=[int(v) for _, _, f in frames for v in f.labels],
        file_name=[f.file_name for _, _, f in frames],
    )


def _shrink(data: bytes, max_side: int, quality: int) -> bytes:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    if max(w, h) <= max_side:
        return data
    s = max_side / max(w, h)
    img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _presize(data: bytes, cfg: BeltCrackConfig, orig_hw) -> bytes:
    """The frame as the pipeline's resize would produce it (without the canvas), encoded for storage."""
    from beltcrack_jax.data import transforms as tr
    from PIL import Image

    p = tr.resize_params(cfg.storage_resize, orig_hw, cfg.storage_size)
    img = tr.decode_frame(data, decoder="pil")
    img = img.resize((p.nw, p.nh), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    if cfg.storage_format == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        img.save(buf, format="JPEG", quality=cfg.storage_jpeg_quality)
    return buf.getvalue()
