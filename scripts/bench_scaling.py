"""Data-parallel scaling of a training step (JAX backend, Keras ``DataParallel``).

For n = 1, 2, 4, ... up to ``--devices``: the default network (or ``--small``) trains on random
slices with ``--batch-per-device`` slices per device, and the script prints slices/s and the
scaling efficiency ``throughput_n / (n * throughput_1)``.  On a CPU (no accelerator; JAX's
simulated host devices) speed means nothing: it only checks and prints that a global batch on n
devices gives the one-device loss.

    KERAS_BACKEND=jax python scripts/bench_scaling.py --devices 4            # GPU node
    KERAS_BACKEND=jax python scripts/bench_scaling.py --devices 2 --small    # CPU: agreement
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=2, help="largest device count")
    p.add_argument("--batch-per-device", type=int, default=64)
    p.add_argument("--steps", type=int, default=30, help="timed steps per device count")
    p.add_argument("--small", action="store_true", help="levels 2, 8 channels, 64x64 slices")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "jax")
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}"
    import jax
    import keras
    import numpy as np

    if keras.backend.backend() != "jax":
        sys.exit("bench_scaling: needs KERAS_BACKEND=jax")
    from braintseg.config import ModelConfig
    from braintseg.model import build_model
    from braintseg.training.losses import GeneralizedDiceCE

    gpus = [d for d in jax.devices() if d.platform != "cpu"]
    devices = gpus or jax.devices()
    on_cpu = not gpus
    mcfg = ModelConfig(levels=2, start_channels=8, noise_stddev=0.0) if args.small else \
        ModelConfig(noise_stddev=0.0)
    hw = (64, 64) if args.small else (192, 152)
    counts = [n for n in (1, 2, 4, 8, 16, 32) if n <= min(args.devices, len(devices))]
    rng = np.random.default_rng(0)

    def batch(n: int) -> tuple[np.ndarray, np.ndarray]:
        b = args.batch_per_device * (counts[-1] if on_cpu else n)  # CPU: one global batch
        return (rng.standard_normal((b, *hw, 4)).astype("float32"),
                rng.integers(0, 4, (b, *hw)).astype("uint8"))

    results = []
    for n in counts:
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices[:n], auto_shard_dataset=False))
        keras.utils.set_random_seed(1)
        model = build_model(mcfg, (*hw, 4))
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=GeneralizedDiceCE())
        rng = np.random.default_rng(0)
        x, y = batch(n)
        losses = [float(model.train_on_batch(x, y))]  # compiles
        start = time.perf_counter()
        for _ in range(args.steps):
            losses.append(float(model.train_on_batch(x, y)))
        seconds = time.perf_counter() - start
        results.append({"devices": n, "global_batch": len(x),
                        "slices_per_s": args.steps * len(x) / seconds, "losses": losses})
        keras.distribution.set_distribution(None)
    one = results[0]
    print(f"{'devices':>8} {'batch':>6} {'slices/s':>10} {'efficiency':>10}")
    for r in results:
        r["efficiency"] = r["slices_per_s"] / (r["devices"] * one["slices_per_s"])
        eff = "n/a (CPU)" if on_cpu else f"{r['efficiency']:.3f}"
        print(f"{r['devices']:>8} {r['global_batch']:>6} {r['slices_per_s']:>10.1f} {eff:>10}")
    worst = max(abs(a - b) for r in results for a, b in zip(r["losses"], one["losses"],
                                                              strict=True)) if on_cpu else None
    if on_cpu:
        print(f"CPU: no speed figures; the {len(results)} runs agree: largest per-step loss "
              f"difference to 1 device {worst:.2e} over {args.steps + 1} steps "
              f"({'OK' if worst < 1e-4 else 'DIFFER'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"on_cpu": on_cpu, "device": str(devices[0]), "results": results,
                       "largest_loss_difference": worst}, f, indent=1)


if __name__ == "__main__":
    main()
