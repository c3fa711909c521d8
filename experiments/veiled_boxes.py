"""Which cracks does each model find: those its key frame shows, or those a transient veil hides in it?

    python experiments/veiled_boxes.py --config veiled [--name N] [--root workdirs/temporal_gain_N] [--veiled 0.5]

The temporal-gain runs (experiments/temporal_gain.py) score the whole test split, where most cracks are plainly
visible in the key frame and a single-frame model needs nothing more. This re-renders the test split of the
config's synthetic dataset (the generator is deterministic; nothing is read from the records) to measure how much
of each GT crack the key frame's veil covers (`Frame.veil_cover`: mean veil opacity over the crack's visible
pixels), then scores every finished run's test detections (`eval_test_best/detections.json`) on two subsets with
pycocotools: the cracks veiled in their key frame (cover >= --veiled) and the clear ones (cover < --clear). The
other cracks of an image are marked `iscrowd` for that score, so a detection of them is neither a hit nor a
false positive. Check: the AP50 over all boxes must equal the run's own test mAP50 (same GT, same detections).
Writes experiments/results/veiled_boxes_<config>.json and prints a markdown table (mean +- std over seeds).
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from beltcrack_jax.convert import load_config_file                      # noqa: E402
from beltcrack_jax.data.synth.presets import PRESETS                     # noqa: E402
from beltcrack_jax.data.synth.sequence import Sequence                   # noqa: E402
from beltcrack_jax.data.synth.writer import sequence_plan                # noqa: E402
from beltcrack_jax.data.tfds_beltcrack.beltcrack_dataset_builder import SYNTHETIC, seeded_config   # noqa: E402
from beltcrack_jax.eval.coco import coco_metrics                         # noqa: E402


def preset_and_seed(data_name: str) -> tuple[str, int]:
    """'beltcrack/synthetic_veiled' -> ('veiled', 0); 'beltcrack/synthetic_demo_seed7' -> ('demo', 7)."""
    name = data_name.split("/", 1)[-1]
    if name in SYNTHETIC:
        return SYNTHETIC[name], 0
    cfg = seeded_config(name)
    if cfg is None:
        raise ValueError(f"data.name {data_name!r} is not a synthetic dataset (expected one of "
                         f"{sorted(SYNTHETIC)}, optionally with _seed<N>)")
    return cfg.synthetic_preset, cfg.synthetic_seed


def test_gt_with_cover(preset: str, seed: int, split: str = "test") -> dict:
    """The split's COCO GT as the generator writes it, each annotation with its key-frame `veil_cover`."""
    p = PRESETS[preset]
    w, h = p.out_size
    images, anns = [], []
    for s in sequence_plan(preset, seed)[split]:
        seq = Sequence(p, seed, s.index, s.num_frames)
        for t in range(s.num_frames):
            fr = seq.render(t)
            image_id = s.first_image_id + t
            images.append({"id": image_id, "width": w, "height": h, "file_name": f"{split}/{s.name}/{t}.jpg"})
            for b, cover in zip(fr.boxes, fr.veil_cover):
                bb = [float(x) for x in b]
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "bbox": bb,
                             "area": bb[2] * bb[3], "iscrowd": 0, "veil_cover": float(cover)})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "crack"}]}


def subset_gt(gt: dict, keep) -> dict:
    """GT where the annotations `keep(a)` rejects become iscrowd (ignored); images keep all their boxes, so the
    evaluated image set (annotated frames) stays the one of the full score."""
    out = copy.deepcopy(gt)
    for a in out["annotations"]:
        a["iscrowd"] = 0 if keep(a) else 1
    return out


def score(gt: dict, dets: list[dict], veiled: float, clear: float) -> dict:
    row = {}
    for name, keep in (("all", lambda a: True), ("veiled", lambda a: a["veil_cover"] >= veiled),
                       ("clear", lambda a: a["veil_cover"] < clear)):
        m = coco_metrics(subset_gt(gt, keep), dets, "paper")   # annotated frames: iscrowd boxes count too
        row[name] = {"map50": m["map50"], "recall": m["recall"], "num_gt": m["num_gt"]}
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="veiled", help="config of the runs (configs/<name>.py)")
    ap.add_argument("--name", default=None, help="the temporal_gain.py --name of the runs (default: the config)")
    ap.add_argument("--root", default=None, help="runs' root (default workdirs/temporal_gain_<name>)")
    ap.add_argument("--veiled", type=float, default=0.5, help="key-frame veil cover at which a crack is 'veiled'")
    ap.add_argument("--clear", type=float, default=0.05, help="cover below which a crack is 'clear'")
    args = ap.parse_args(argv)
    cfg = load_config_file(str(ROOT / "configs" / f"{args.config}.py"))
    name = args.name or args.config
    root = pathlib.Path(args.root or ROOT / "workdirs" / f"temporal_gain_{name}")
    preset, seed = preset_and_seed(cfg.data.name)
    gt = test_gt_with_cover(preset, seed)
    cover = np.array([a["veil_cover"] for a in gt["annotations"]])
    n_veiled, n_clear = int((cover >= args.veiled).sum()), int((cover < args.clear).sum())
    print(f"{cfg.data.name} test: {len(cover)} GT boxes, veiled (cover >= {args.veiled}) {n_veiled}, "
          f"clear (< {args.clear}) {n_clear}, in between {len(cover) - n_veiled - n_clear}")
    runs = []
    for work in sorted(root.glob("*_s*")):
        det_file, met_file = work / "eval_test_best" / "detections.json", work / "eval_test_best" / "metrics.json"
        if not det_file.exists():
            continue
        variant, s = work.name.rsplit("_s", 1)
        row = {"variant": variant, "seed": int(s), **score(gt, json.loads(det_file.read_text()), args.veiled,
                                                          args.clear)}
        own = json.loads(met_file.read_text())["map50"]
        if abs(row["all"]["map50"] - own) > 1e-6:
            raise SystemExit(f"{work}: AP50 over all re-rendered boxes {row['all']['map50']:.4f} != the run's own "
                             f"test mAP50 {own:.4f}: the re-rendered GT is not the GT the run was scored on")
        runs.append(row)
        print(f"  {work.name}: " + ", ".join(f"{k} AP50 {row[k]['map50']:.3f} (R {row[k]['recall']:.2f})"
                                             for k in ("all", "veiled", "clear")))
    if not runs:
        raise SystemExit(f"no finished runs (eval_test_best/detections.json) under {root}")
    lines = ["| model | seeds | test AP50, all cracks | veiled in the key frame | clear in the key frame |",
             "|---|---|---:|---:|---:|"]
    for variant in sorted({r["variant"] for r in runs}):
        rs = [r for r in runs if r["variant"] == variant]
        cells = []
        for k in ("all", "veiled", "clear"):
            v = np.array([r[k]["map50"] for r in rs])
            rec = np.array([r[k]["recall"] for r in rs])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f} (R {rec.mean():.2f})")
        lines.append(f"| {variant} | {' '.join(str(r['seed']) for r in rs)} | " + " | ".join(cells) + " |")
    n = {k: runs[0][k]["num_gt"] for k in ("all", "veiled", "clear")}
    lines.append(f"\nGT boxes: {n['all']} in all, {n['veiled']} veiled (cover >= {args.veiled}), {n['clear']} clear "
                 f"(cover < {args.clear}); std over seeds (ddof 1); R = recall at IoU 0.5 over all detections.")
    print("\n".join(lines))
    out = ROOT / "experiments" / "results" / f"veiled_boxes_{name}.json"
    out.write_text(json.dumps({"config": args.config, "name": name, "veiled": args.veiled, "clear": args.clear,
                               "runs": runs}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
