"""Data-pipeline throughput: training clips/s at 512x512 (T=5, letterbox) from 1920x1080 JPEG frames.

    python bench/data_pipeline.py [--work DIR] [--sequences 3] [--frames 24] [--seconds 20] [--workers 0 2]

Builds (once, cached in --work) a small 1080p synthetic set (preset '14ks-like' at reduced sequence count) into
two TFDS datasets: original JPEGs, and frames stored pre-letterboxed as lossless PNG (`storage_resize`), then
times `make_train_iterator` for several decoders / worker counts and prints clips/s next to what a GPU training
step would consume (numbers from docs/users_and_performance: H100 bf16 ~260 clips/s at 20% MFU, ~649 at 50%).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

import beltcrack_jax.data  # noqa: E402,F401
from beltcrack_jax.data import pipeline as P  # noqa: E402
from beltcrack_jax.data.tfds_beltcrack import BeltCrackConfig  # noqa: E402

# Training clips/s one GPU step consumes (762 GFLOP per training clip at 512^2, users_and_performance.md §2)
GPU_NEEDS = {"H100 bf16 @20% MFU": 260, "H100 bf16 @50% MFU": 649, "H100 tf32 @20%": 130, "RTX 4090 bf16 @20%": 43}


def build(work: str, sequences: int, frames: int) -> str:
    from beltcrack_jax.data import synthetic

    data_dir = os.path.join(work, "tfds")
    root = os.path.join(data_dir, "downloads", "manual", "Bench14ks")
    marker = os.path.join(root, ".complete")
    if not os.path.exists(marker):
        t = time.perf_counter()
        synthetic.generate("14ks-like", root, seed=0, num_sequences=sequences, max_frames=frames)
        open(marker, "w").write("ok")
        print(f"generated {sequences} x <= {frames} frames of 1920x1080 in {time.perf_counter() - t:.1f} s")
    for cfg in (BeltCrackConfig(name="bench14ks", release="Bench14ks", min_sequence_length=1),
                BeltCrackConfig(name="bench14ks_letterbox512", release="Bench14ks", storage_resize="letterbox",
                                storage_size=512, min_sequence_length=1)):
        t = time.perf_counter()
        b = tfds.builder("beltcrack", config=cfg, data_dir=data_dir)
        if not b.is_prepared():
            b.download_and_prepare()
            print(f"built beltcrack/{cfg.name} in {time.perf_counter() - t:.1f} s")
    return data_dir


def config(data_dir: str, name: str, decoder: str, workers: int, threads: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(num_frames=5))
    c.data = ml_collections.ConfigDict(dict(
        name=f"beltcrack/{name}", data_dir=data_dir, image_size=512, train_resize="letterbox", key_frames="all",
        max_boxes=64,
        decoder=decoder, num_workers=workers, num_threads=threads, prefetch=4, shuffle=True, prepare=False))
    return c


def measure(cfg, batch: int, seconds: float, warmup: int = 2) -> tuple[float, float]:
    """-> (clips per wall second, clips per CPU second of this process; the latter only means something without
    worker processes and is robust to other load on the machine)."""
    it = P.make_train_iterator(cfg, "train", batch_size_per_process=batch, seed=0)
    for _ in range(warmup):
        next(it)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        b = next(it)
        n += b["clips"].shape[0]
    return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/beltcrack_bench")
    ap.add_argument("--sequences", type=int, default=3)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    data_dir = build(args.work, args.sequences, args.frames)
    cases = [("bench14ks", "pil", "original 1080p JPEG, PIL decode + BICUBIC (bit-exact reference)"),
             ("bench14ks", "pil_draft", "original 1080p JPEG, PIL DCT-scaled decode (approx.)"),
             ("bench14ks", "cv2", "original 1080p JPEG, OpenCV decode + INTER_AREA (approx.)"),
             ("bench14ks_letterbox512", "pil", "pre-letterboxed PNG storage (bit-exact reference)")]
    cores = os.cpu_count()
    print(f"\nT=5, 512x512 letterbox, batch {args.batch}, {cores} CPU cores, {args.seconds:.0f} s per case")
    results = []
    for workers in args.workers:
        for name, dec, what in cases:
            threads = max(1, cores if workers == 0 else 1)
            rate, per_cpu = measure(config(data_dir, name, dec, workers, threads), args.batch, args.seconds)
            results.append(dict(dataset=name, decoder=dec, workers=workers, threads=threads, clips_per_s=rate,
                                clips_per_cpu_s=per_cpu if workers == 0 else None))
            cpu = f"{per_cpu:6.2f} clips/CPU-s" if workers == 0 else " " * 17
            print(f"  workers={workers} threads={threads:2d}  {rate:7.2f} clips/s  ({rate * 5:7.1f} frames/s)  {cpu}  "
                  f"{what}")
    print("\nA GPU training step consumes (clips/s):")
    for k, v in GPU_NEEDS.items():
        print(f"  {k:24s} {v:5d}")
    best = max(r["clips_per_s"] for r in results)
    print(f"best wall-clock rate here: {best:.1f} clips/s on {cores} cores (shared machines read low)")
    need = GPU_NEEDS["H100 bf16 @20% MFU"]
    for r in results:
        if r["clips_per_cpu_s"]:
            print(f"  {r['dataset']:24s} {r['decoder']:9s}: {r['clips_per_cpu_s']:6.2f} clips per CPU-second -> "
                  f"~{need / r['clips_per_cpu_s']:.0f} cores to feed {need} clips/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cores=cores, batch=args.batch, results=results, gpu_needs=GPU_NEEDS), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
