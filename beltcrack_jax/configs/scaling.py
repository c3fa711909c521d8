"""Large-batch scaling runs: `--config configs/scaling.py:256` sets the GLOBAL batch (clips per optimiser step).

The lr follows the global batch by `train.lr.scaling` ('linear': base x batch/64, or 'sqrt') with the reference's
clamp OFF (at batch 256 linear gives 4e-2; the clamp would cap at 5e-2 from batch 320 up), a warm-up of
`train.lr.warmup_epochs` counted in steps (`unit='step'`: the quadratic warm-up and cosine run per step, not per
epoch), bf16 compute. The rule and its values are printed at start. Everything else is the reference recipe;
override on the command line, e.g. `--config.train.lr.scaling=sqrt --config.train.lr.warmup_epochs=5`.
Arg forms: `256`, or `batch=256,accum=2,dtype=float32`.
"""

from beltcrack_jax.configs import default as _default


def _parse(arg):
    out = {"batch": 64, "accum": 1, "dtype": "bfloat16"}
    if not arg:
        return out
    for i, part in enumerate(str(arg).split(",")):
        key, _, val = part.rpartition("=")
        key = key or ("batch" if i == 0 else "")
        if key not in out:
            raise ValueError(f"configs/scaling.py: unknown argument {part!r}; use '256' or "
                             "'batch=256,accum=2,dtype=float32'")
        out[key] = val if key == "dtype" else int(val)
    return out


def get_config(arg=None):
    a = _parse(arg)
    c = _default.get_config()
    c.train.batch_size = a["batch"]
    c.train.grad_accum = a["accum"]
    c.train.compute_dtype = a["dtype"]
    c.train.lr.scaling = "linear"
    c.train.lr.clamp = False
    c.train.lr.unit = "step"
    c.train.lr.warmup_epochs = 5          # Goyal et al. / YOLOX: 5 warm-up epochs for large batches
    c.train.log_every_steps = 20
    c.data.num_workers = 8
    c.data.num_threads = 8
    c.eval.batch_size = max(8, min(64, a["batch"]))
    return c
