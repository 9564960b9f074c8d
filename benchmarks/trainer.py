"""The trial trainer (``search.train.train_model``) vs a minimal hand-written PyTorch loop.

Both get the same network (copies of one initialisation), the same data already on the device,
the same batch size, precision, memory format, optimiser (SGD, Nesterov momentum), loss
(label-smoothed cross-entropy), augmentation (``search.data.augment``: the data path is compared
separately by ``benchmarks.datapath``) and the same number of steps. Validation is *included in
both*: the trainer scores the validation split after every epoch, and so does the hand loop,
with the same batch size. What the hand loop leaves out is the trainer's bookkeeping: the
learning-rate schedule, the on-device loss buffer, the NaN/inf checks, the time budget and the
epoch records. The wall clock of each whole call (a fresh copy of the network each time) is
timed, variants interleaved round-robin.

    python -m benchmarks.trainer            # 32 px, 2,048 train / 512 val images, 2 epochs (32 steps)
    python -m benchmarks.trainer --quick    # CI smoke: 16 px, 256 images, 4 steps
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch
from torch import nn

import search.train
from benchmarks._report import (
    env_header,
    footer,
    median,
    report,
    set_threads,
    sync_for,
    target,
    timeit_interleaved,
)
from benchmarks._workloads import net, random_splits
from search.data import Splits, augment, steps_per_epoch
from search.devices import resolve_device
from search.train import TrainConfig, train_model
from space import build_model, complexity

TARGET = 0.97  # trainer images/s >= 0.97x the hand loop's


def hand_loop(model: nn.Module, splits: Splits, cfg: TrainConfig, device: torch.device, seed: int,
              steps: int) -> float:
    """Train ``model`` for ``steps`` steps the plain way, validating after every epoch.

    Returns the last validation accuracy (so the work cannot be optimised away).
    """
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    cuda = device.type == "cuda"
    model.to(device)
    nhwc = cfg.nhwc(device)
    if nhwc:
        model.to(memory_format=torch.channels_last)
    x, y, vx, vy = splits.train_x, splits.train_y, splits.val_x, splits.val_y
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    bs, per_epoch = cfg.batch_size, steps_per_epoch(len(x), cfg.batch_size)
    step, acc = 0, 0.0
    while step < steps:
        model.train()
        order = torch.randperm(len(x), device=device, generator=gen)
        for i in range(min(per_epoch, steps - step)):
            idx = order[i * bs:(i + 1) * bs]
            xb = augment(x[idx], splits.pad, splits.flip, gen)
            if nhwc:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", torch.bfloat16, enabled=cuda and cfg.bf16):
                loss = loss_fn(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=device)
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=cuda and cfg.bf16):
            for j in range(0, len(vx), cfg.eval_batch_size):
                xb = vx[j:j + cfg.eval_batch_size]
                if nhwc:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                correct += (model(xb).argmax(1) == vy[j:j + cfg.eval_batch_size]).sum()
        acc = correct.item() / len(vx)
    return acc


def compare(splits: Splits, cfg: TrainConfig, spec, device: torch.device, repeats: int, warmup: int = 1,
            seed: int = 0, label: str = "") -> dict:
    """Time ``train_model`` and ``hand_loop`` on copies of one network; print and return the rates.

    Args:
        splits: data on ``device``.
        cfg: the training config (its ``epochs`` sets the steps of both).
        spec: the network's NetSpec.
        device: the training device.
        repeats: timed calls of each variant, interleaved.
        warmup: untimed calls of each first.
        seed: seed of both runs.
        label: printed before the variant names.
    """
    template = build_model(spec, cfg.zero_init_residual)
    steps = max(1, round(cfg.epochs * steps_per_epoch(len(splits.train_x), cfg.batch_size)))
    images = steps * cfg.batch_size
    inner: dict[str, list[float]] = {"train_time_s": []}

    def trainer() -> None:
        result = train_model(copy.deepcopy(template), splits, cfg, device=device, seed=seed)
        assert result.steps == steps, (result.steps, steps)
        inner["train_time_s"].append(result.train_time_s)

    def hand() -> None:
        hand_loop(copy.deepcopy(template), splits, cfg, device, seed, steps)

    times = timeit_interleaved({"train_model": trainer, "hand loop": hand}, repeats, warmup,
                               sync=sync_for(device))
    rate_t, rate_h = images / median(times["train_model"]), images / median(times["hand loop"])
    print(report(f"{label}train_model (incl. val)", times["train_model"], images, "img"))
    print(report(f"{label}hand loop (incl. val)", times["hand loop"], images, "img"))
    inner_t = inner["train_time_s"][warmup:]
    print(f"{label + 'train_model, val excluded':<32} median {median(inner_t):.3f} s (its train_time_s) "
          f"-> {images / median(inner_t):,.1f} img/s")
    r = rate_t / rate_h
    print(f"ratio       {label}train_model / hand loop images/s: {r:.3f}x")
    return {"trainer": rate_t, "hand": rate_h, "ratio": r}


def idle_gaps(busy: list[tuple[float, float]]) -> tuple[float, float, list[tuple[float, float]]]:
    """Busy time, span and idle gaps of a device's (start, end) intervals, sorted by start.

    Returns (busy time = the intervals' union, span = first start to last end, gaps as
    (length, offset from the first start)); overlapping intervals (concurrent streams) merge.
    """
    start, end = busy[0]
    gaps, union = [], end - start
    for a, b in busy[1:]:
        if a > end:
            gaps.append((a - end, end - start))
            union += b - a
        else:
            union += max(0.0, b - end)
        end = max(end, b)
    return union, end - start, gaps


GPU_OPS = ("kernel", "gpu_memcpy", "gpu_memset")  # trace categories that occupy the GPU
STEP_END = "multi_tensor_apply_kernel"  # the optimizer's foreach kernels close every training step


def gpu_timeline(splits: Splits, cfg: TrainConfig, spec, device: torch.device, steps: int,
                 out_dir: str | None) -> dict:
    """Profile one ``train_model`` call (CUDA activity only) and analyse its GPU timeline.

    CPU-op tracing is off: it adds ~10-20 us of host work per op, enough to make a GPU-bound
    loop host-bound under the profiler (seen on an H100: 59% busy with it on, 66% without).
    The gzipped Chrome trace is written to ``out_dir`` when given (``--analyse FILE`` reads it).
    """
    import gzip
    import json
    import tempfile
    from pathlib import Path

    from torch.profiler import ProfilerActivity, profile

    per_epoch = steps_per_epoch(len(splits.train_x), cfg.batch_size)
    cfg = dataclasses.replace(cfg, epochs=steps / per_epoch)
    template = build_model(spec, cfg.zero_init_residual)
    train_model(copy.deepcopy(template), splits, cfg, device=device, seed=0)  # warm: kernels, allocator
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        train_model(copy.deepcopy(template), splits, cfg, device=device, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
        if out_dir:
            dest = Path(out_dir) / "trainer-trace.json.gz"
            dest.write_bytes(gzip.compress(path.read_bytes()))
            print(f"trace:       {dest} (chrome://tracing or https://ui.perfetto.dev)")
    return analyse_trace(trace)


def analyse_trace(trace: dict) -> dict:
    """Busy share, idle gaps and step-boundary gaps of a training trace's GPU ops; prints them.

    A host stall between steps (Python, a sync, the trainer's bookkeeping) shows as a gap
    between the optimizer's last kernel of one step and the first kernel of the next. Gaps
    inside a step are launch overhead of eager PyTorch (kernels shorter than their launch),
    the same in any loop; the share of GPU ops under 5 us says how much of that there is.
    """
    ops = sorted((e for e in trace["traceEvents"] if e.get("cat") in GPU_OPS), key=lambda e: e["ts"])
    if not ops:
        print("timeline:    no GPU events in the trace")
        return {}
    union, span, gaps = idle_gaps([(e["ts"], e["ts"] + e.get("dur", 0)) for e in ops])
    over = [g for g, _ in gaps if g > 50]
    tiny = sum(1 for e in ops if e.get("dur", 0) < 5)
    boundary = [b["ts"] - (a["ts"] + a.get("dur", 0)) for a, b in zip(ops, ops[1:], strict=False)
                if STEP_END in a["name"] and STEP_END not in b["name"]]
    print(f"timeline:    {len(ops)} GPU ops over {span / 1e3:.1f} ms (training steps + validation); GPU busy "
          f"{union / span:.1%} of the span; {tiny / len(ops):.0%} of the ops run < 5 us (launch-bound in eager mode)")
    print(f"gaps:        {len(over)} gaps > 50 us between consecutive GPU ops, {sum(over) / 1e3:.2f} ms in all "
          f"({sum(over) / span:.1%} of the span); largest: "
          + ", ".join(f"{g:.0f} us at {at / 1e3:.1f} ms" for g, at in sorted(gaps, reverse=True)[:3]))
    out = {"busy": union / span, "gaps_ms": sum(over) / 1e3, "span_ms": span / 1e3, "tiny": tiny / len(ops)}
    if boundary:
        boundary.sort()
        out["boundary_ms"] = sum(boundary) / 1e3
        print(f"steps:       {len(boundary)} step boundaries (optimizer's last kernel -> next op): gap median "
              f"{boundary[len(boundary) // 2]:.1f} us, max {boundary[-1]:.0f} us, {sum(boundary) / 1e3:.2f} ms in all "
              f"= {sum(boundary) / span:.2%} of the span (host stalls between steps)")
    return out


def _allocator_child(tuned: bool, args: tuple) -> dict:
    """In a fresh process: time ``calls`` train_model calls with or without ``tune_cpu_malloc``."""
    threads, spec, n_train, n_val, size, cfg, calls = args
    set_threads(threads)
    if tuned:  # the entry points (resnext-nas, its workers) tune the allocator; a library call does not
        search.devices.tune_cpu_malloc()
    splits = random_splits(n_train, n_val, size, "cpu")
    template = build_model(spec, cfg.zero_init_residual)
    device = torch.device("cpu")
    train_model(copy.deepcopy(template), splits, cfg, device=device, seed=0)  # warm-up
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    times = timeit_interleaved({"t": lambda: train_model(copy.deepcopy(template), splits, cfg, device=device,
                                                         seed=0)}, calls, warmup=0)["t"]
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"times": times, "faults": (r1.ru_minflt - r0.ru_minflt) / calls,
            "sys": (r1.ru_stime - r0.ru_stime) / calls, "user": (r1.ru_utime - r0.ru_utime) / calls,
            "tuned": bool(search.devices._malloc_tuned)}


def compare_allocator(spec, n_train: int, n_val: int, size: int, cfg: TrainConfig, threads: int,
                      rounds: int, calls: int) -> float:
    """train_model with glibc's default allocator settings vs ``tune_cpu_malloc`` (CPU only).

    mallopt cannot be undone inside a process, so each variant runs in fresh processes,
    alternating (off, on, off, on, ...); returns the on/off images/s ratio.
    """
    job = (threads, spec, n_train, n_val, size, cfg, calls)
    runs: dict[bool, list[dict]] = {False: [], True: []}
    ctx = get_context("spawn")
    for _ in range(rounds):
        for tuned in (False, True):
            with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                runs[tuned].append(pool.submit(_allocator_child, tuned, job).result())
    steps = max(1, round(cfg.epochs * steps_per_epoch(n_train, cfg.batch_size)))
    images = steps * cfg.batch_size
    rates = {}
    for tuned, label in ((False, "glibc defaults"), (True, "tune_cpu_malloc")):
        times = [t for r in runs[tuned] for t in r["times"]]
        faults = median([r["faults"] for r in runs[tuned]])
        sys_s, user_s = median([r["sys"] for r in runs[tuned]]), median([r["user"] for r in runs[tuned]])
        print(report(f"train_model, {label}", times, images, "img"))
        print(f"{'':<32} per call: {faults:,.0f} page faults, {sys_s:.2f} s system + {user_s:.2f} s user CPU"
              + ("" if tuned == runs[tuned][0]["tuned"] else "  (tuning NOT in effect on this machine)"))
        rates[tuned] = images / median(times)
    r = rates[True] / rates[False]
    print(f"ratio       train_model tuned / default allocator images/s: {r:.3f}x")
    return r


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: tiny sizes, 2 repeats")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: see benchmarks/_report)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls of each variant (5)")
    parser.add_argument("--channels-last", choices=("auto", "true", "false"), default="auto",
                        help="NHWC model and inputs in both (auto: the trainer's default, on CUDA only)")
    parser.add_argument("--timeline", action="store_true",
                        help="CUDA: profile one call and report the GPU's idle gaps (trace to $OUT if set)")
    parser.add_argument("--analyse", metavar="TRACE", help="only analyse a saved trace (.json or .json.gz) and exit")
    parser.add_argument("--no-allocator", action="store_true",
                        help="skip the CPU allocator before/after (fresh processes, ~1 min)")
    args = parser.parse_args(argv)
    if args.analyse:
        import gzip
        import json

        with (gzip.open if args.analyse.endswith(".gz") else open)(args.analyse, "rt") as f:
            return analyse_trace(json.load(f))
    set_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.quick:
        size, n_train, n_val, bs, epochs, repeats = 16, 256, 64, 64, 1, 2
        spec = net(2, stem_ch=8, bottleneck_ch=8, input_size=size)
    elif cuda:
        # the ~1M-parameter network of benchmarks.gpu at the cifar10 recipe's batch
        size, n_train, n_val, bs, epochs, repeats = 32, 16384, 2048, 512, 2, 5
        spec = net(8, stages=3, stem_ch=32, bottleneck_ch=32, base_width=16, depth=2, input_size=size)
    else:
        size, n_train, n_val, bs, epochs, repeats = 32, 1024, 256, 128, 2, 5
        spec = net(4, stem_ch=16, bottleneck_ch=16, base_width=8, input_size=size)
    repeats = args.repeats or repeats
    channels_last = {"auto": "auto", "true": True, "false": False}[args.channels_last]
    cfg = TrainConfig(epochs=epochs, batch_size=bs, device=str(device), channels_last=channels_last)
    splits = random_splits(n_train, n_val, size, device)
    steps = epochs * steps_per_epoch(n_train, bs)
    cx = complexity(spec)

    print("benchmark: trial trainer (search.train.train_model) vs a minimal hand-written loop")
    print(env_header(device))
    print(f"network:     {spec.name} ({cx.params / 1e6:.3f}M params, {cx.macs / 1e6:.1f}M MACs/img)")
    print(f"data:        {n_train} train / {n_val} val random images {splits.info.in_ch}x{size}x{size} on "
          f"{device}, pad {splits.pad}, flip {splits.flip}")
    print(f"work:        {steps} steps of batch {bs} ({epochs} epochs), "
          f"{'bf16 autocast' if cuda and cfg.bf16 else 'float32'}, "
          f"{'channels_last' if cfg.nhwc(device) else 'NCHW'}; validation ({n_val} images, batch "
          f"{cfg.eval_batch_size}) after every epoch in BOTH variants")
    print(f"repeats:     {repeats} per variant, interleaved, after 1 warm-up call each; wall clock per call, "
          "median reported")
    t0 = time.perf_counter()
    result = compare(splits, cfg, spec, device, repeats)
    print(target(f"train_model / hand loop >= {TARGET}x", result["ratio"] >= TARGET, f"{result['ratio']:.3f}x"))
    if args.timeline and cuda:
        print("\n== GPU timeline of train_model under torch.profiler (host stalls show as gaps between kernels)")
        result["timeline"] = gpu_timeline(splits, cfg, spec, device, steps=40, out_dir=os.environ.get("OUT"))
    elif args.timeline:
        print("timeline:    CUDA only (no CUDA device here)")
    if device.type == "cpu" and not args.quick and not args.no_allocator:
        print("\n== CPU allocator: search.devices.tune_cpu_malloc before/after (same work, fresh processes, "
              "alternating off/on, 2 rounds x 2 timed calls after 1 warm-up each)")
        result["allocator"] = compare_allocator(spec, n_train, n_val, size, cfg, args.threads, rounds=2, calls=2)
    print(f"elapsed:     {time.perf_counter() - t0:.1f} s")
    print(footer())
    return result


if __name__ == "__main__":
    main()
