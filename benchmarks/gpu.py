"""The GPU benchmark: trial throughput by cardinality, precision, memory format and cudnn.benchmark.

For ResNeXt networks of equal width and cardinality 1, 8 and 32 (1x128d, 8x16d, 32x4d: the
paper's comparison at CIFAR size), every combination of float32 / bf16 autocast, NCHW /
channels_last and ``torch.backends.cudnn.benchmark`` off / on trains through the real trial
trainer (``search.train.train_model``, data resident on the GPU): first a short cold trial (a new
network: cudnn autotuning and lazy kernel loading land here), then a timed trial whose
images/s come from the trainer's CUDA-event training time (validation excluded). It ends with

- a rule table: the fastest memory format per (cardinality, dtype), and when cudnn.benchmark
  pays for its autotuning within a 10-second trial;
- the cost of a short probe at trial start (a few steps in each memory format) that could pick
  the format per network, and whether the probe picks the format the long runs found fastest
  (on an H100 it agreed with the rule everywhere, so ``channels_last: auto`` is a rule: CUDA on);
- the ~1M-parameter network's images/s against its 40,000 target.

``--only compile`` measures ``torch.compile``'s cost (compile time counted) against its steady
gain for a trial of a few seconds; ``--only overhead`` the study machinery's per-trial overhead
(``benchmarks.overhead``; ``benchmarks.gpu_study`` measures it on a real cifar10 study instead).
A time guard skips the remaining work when ``--budget`` seconds have passed. Without CUDA the
same code runs on the CPU at smoke sizes (bf16 and cudnn flags have no effect there), so CI
exercises it. Figures from an H100: docs/benchmarks.md (sections gpu and gpu_study).

    benchmarks/gpu.sh                      # every GPU section, each under its own limit (~6 min on an H100)
    python -m benchmarks.gpu               # grid + overhead, without the wrapper
    python -m benchmarks.gpu --quick       # smoke sizes (the default without CUDA)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import torch

from benchmarks import overhead
from benchmarks._report import env_header, footer, set_threads, target
from benchmarks._workloads import net, random_splits
from search.data import Splits, steps_per_epoch
from search.devices import resolve_device
from search.train import TrainConfig, train_model
from space import NetSpec, build_model, complexity
from space.blocks import bottleneck_width

CARDINALITIES = (1, 8, 32)
TRIAL_S = 10.0  # the trial length the autotune and probe costs are compared with
TARGET_1M = 40_000  # images/s of a ~1M-parameter CIFAR ResNeXt in bf16 on one H100


def archs(quick: bool) -> dict[str, dict[int, NetSpec]]:
    """Networks of equal bottleneck width per size, one per cardinality (c x (width / c)d)."""
    if quick:  # 1 stage, width 32 at 16 px: seconds on a CPU
        return {"smoke (w32)": {c: net(c, stages=1, stem_ch=8, bottleneck_ch=32, base_width=64 // c, input_size=16)
                                for c in CARDINALITIES}}
    return {
        # ResNeXt-29-like widths (128/256/512) with 2 blocks per stage, CIFAR input
        "wide (w128)": {c: net(c, stages=3, stem_ch=64, bottleneck_ch=64, base_width=128 // c, depth=2)
                        for c in CARDINALITIES},
        # half the width: the small networks a search samples most
        "narrow (w64)": {c: net(c, stages=3, stem_ch=32, bottleneck_ch=32, base_width=128 // c, depth=2)
                         for c in CARDINALITIES},
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trial(spec: NetSpec, splits: Splits, cfg: TrainConfig, device: torch.device, seed: int = 0,
          compile_mode: str | None = None):
    """One trial as the study runs it: build a fresh network, train it; returns (result, wall s).

    ``compile_mode`` wraps the network in ``torch.compile`` (that mode; "default" for the default).
    """
    sync(device)
    t0 = time.perf_counter()
    model = build_model(spec, cfg.zero_init_residual)
    if compile_mode:
        model = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
    result = train_model(model, splits, cfg, device=device, seed=seed)
    sync(device)
    wall = time.perf_counter() - t0
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result, wall


def group_width(spec: NetSpec) -> int:
    """Channels per group of the first stage's grouped 3x3 conv (the "d" of 32x4d at 64 planes)."""
    st = spec.stages[0]
    return bottleneck_width(st.bottleneck_ch, st.base_width, st.groups) // st.groups


def run_grid(nets: dict[str, dict[int, NetSpec]], splits: Splits, base: TrainConfig, device: torch.device,
             cold_epochs: float, deadline: float) -> list[dict]:
    """Every (network, dtype, format, cudnn.benchmark): a cold trial, then a timed one."""
    rows = []
    print(f"\n{'network':<40} {'card':>4} {'gw':>3} {'dtype':<5} {'format':<13} {'cudnn.bm':<8} {'img/s':>10} "
          f"{'cold trial':>10} {'cold extra':>10}")
    skipped = 0
    for size, by_card in nets.items():
        for card, spec in by_card.items():
            for bf16 in (False, True):
                for cl in (False, True):
                    for bm in (False, True):
                        if time.perf_counter() > deadline:
                            skipped += 1
                            continue
                        torch.backends.cudnn.benchmark = bm
                        cfg = dataclasses.replace(base, bf16=bf16, channels_last=cl)
                        cold, cold_wall = trial(spec, splits, dataclasses.replace(cfg, epochs=cold_epochs), device)
                        res, wall = trial(spec, splits, cfg, device)
                        rate = res.images / res.train_time_s
                        extra = cold.train_time_s - cold.images / rate  # autotune + lazy loading
                        row = {"size": size, "card": card, "gw": group_width(spec), "name": spec.name,
                               "params": complexity(spec).params, "bf16": bf16, "cl": cl, "bm": bm, "rate": rate,
                               "cold_s": cold_wall, "extra_s": extra}
                        rows.append(row)
                        print(f"{size + ' ' + spec.name:<40.40} {card:>4} {row['gw']:>3} "
                              f"{'bf16' if bf16 else 'fp32':<5} "
                              f"{'channels_last' if cl else 'NCHW':<13} {'on' if bm else 'off':<8} {rate:>10,.0f} "
                              f"{cold_wall:>9.2f}s {extra:>9.2f}s")
    torch.backends.cudnn.benchmark = False
    if skipped:
        print(f"skipped:     {skipped} configurations: the --budget time guard was reached")
    return rows


def rule_table(rows: list[dict], cuda: bool) -> dict:
    """Fastest memory format per (cardinality, dtype), and when cudnn.benchmark pays off."""
    print("\nrecommendation: fastest memory format per (cardinality, dtype) "
          "(geometric mean over network sizes of the best img/s over cudnn.benchmark)")
    print(f"{'card':>4} {'dtype':<5} {'fastest':<13} {'CL / NCHW img/s':>16}  per size")
    rules = {}
    for card in CARDINALITIES:
        for bf16 in (False, True):
            per_size = {}
            for size in dict.fromkeys(r["size"] for r in rows):
                best = {cl: max((r["rate"] for r in rows if r["size"] == size and r["card"] == card
                                 and r["bf16"] == bf16 and r["cl"] == cl), default=None) for cl in (False, True)}
                if None not in best.values():
                    per_size[size] = best[True] / best[False]
            if not per_size:
                continue
            gm = math.exp(sum(math.log(v) for v in per_size.values()) / len(per_size))
            fastest = "channels_last" if gm > 1 else "NCHW"
            rules[(card, bf16)] = fastest
            detail = ", ".join(f"{s.split()[0]} {v:.2f}x" for s, v in per_size.items())
            print(f"{card:>4} {'bf16' if bf16 else 'fp32':<5} {fastest:<13} {gm:>15.2f}x  {detail}")
    if not cuda:
        print("(CPU smoke run: bf16 autocast and cudnn.benchmark have no effect on the CPU; the table shows the "
              "code path, not a GPU recommendation)")

    print(f"\ncudnn.benchmark per (cardinality, dtype, format), first size: steady gain vs its cold-trial cost; "
          f"pays off within a {TRIAL_S:g}-s trial when the time saved exceeds the extra cold time")
    print(f"{'card':>4} {'dtype':<5} {'format':<13} {'on/off img/s':>12} {'extra cold s':>12} "
          f"{'break-even':>11}  verdict")
    first = rows[0]["size"] if rows else None
    for card in CARDINALITIES:
        for bf16 in (False, True):
            for cl in (False, True):
                pick = {r["bm"]: r for r in rows if r["size"] == first and r["card"] == card and r["bf16"] == bf16
                        and r["cl"] == cl}
                if len(pick) < 2:
                    continue
                on, off = pick[True], pick[False]
                gain = on["rate"] / off["rate"]
                extra = max(0.0, on["extra_s"] - off["extra_s"])  # the autotuning's own cost
                saved_per_s = 1 - off["rate"] / on["rate"]  # share of training time saved once tuned
                breakeven = extra / saved_per_s if saved_per_s > 0 else math.inf
                verdict = "on" if breakeven < TRIAL_S else "off"
                print(f"{card:>4} {'bf16' if bf16 else 'fp32':<5} {'channels_last' if cl else 'NCHW':<13} "
                      f"{gain:>11.2f}x {extra:>12.2f} {breakeven:>10.1f}s  {verdict}")
    return rules


def probe(nets: dict[int, NetSpec], splits: Splits, base: TrainConfig, device: torch.device, steps: int,
          rows: list[dict], size: str) -> None:
    """Cost of trying both memory formats for ``steps`` steps at trial start, and what it picks."""
    bs = base.batch_size
    epochs = steps / steps_per_epoch(len(splits.train_x), bs)
    small = dataclasses.replace(splits, val_x=splits.val_x[:bs], val_y=splits.val_y[:bs])
    bf16 = device.type == "cuda"
    print(f"\nprobe: {steps} steps in NCHW, then {steps} in channels_last, fresh networks ({size}, "
          f"{'bf16' if bf16 else 'fp32'}, cudnn.benchmark off), at trial start")
    print(f"{'card':>4} {'NCHW s':>8} {'CL s':>8} {'probe s':>8} {'of 10-s trial':>13} {'probe picks':<13} "
          f"{'long runs say':<13}")
    for card, spec in nets.items():
        walls, rates = {}, {}
        for cl in (False, True):
            cfg = dataclasses.replace(base, epochs=epochs, bf16=bf16, channels_last=cl)
            res, walls[cl] = trial(spec, small, cfg, device)
            rates[cl] = res.images / res.train_time_s
        picks = "channels_last" if rates[True] > rates[False] else "NCHW"
        best = {cl: max((r["rate"] for r in rows if r["size"] == size and r["card"] == card and r["bf16"] == bf16
                         and r["cl"] == cl), default=0.0) for cl in (False, True)}
        says = ("channels_last" if best[True] > best[False] else "NCHW") if all(best.values()) else "n/a"
        total = walls[False] + walls[True]
        print(f"{card:>4} {walls[False]:>8.2f} {walls[True]:>8.2f} {total:>8.2f} {total / TRIAL_S:>12.1%} "
              f"{picks:<13} {says:<13}")


def compile_cost(warm: NetSpec, spec: NetSpec, splits: Splits, base: TrainConfig, device: torch.device,
                 epochs: int, modes: tuple[str, ...], deadline: float) -> list[dict]:
    """Eager vs ``torch.compile`` for one trial of a few seconds, compile time counted.

    Each trial is a fresh network, as in a study (a new architecture compiles anew); ``warm`` is
    compiled first, untimed, so the compiler's one-time start (imports, worker pool) that a study
    pays once is not charged to every trial. Per variant: the whole trial's wall clock (build,
    compile, train, per-epoch validation) and the steady training rate (epochs 2..n, from the
    trainer's clock). The compile cost is the wall time the steady rate does not explain:
    ``wall_c - (wall_e - n * (T_e - T_c))``; compiling pays off for trials longer than
    ``cost / (1 - T_c / T_e)`` seconds of eager training.
    """
    import torch._inductor.config

    # no kernels or graphs from an earlier run of this benchmark: every trial's network is new in a study
    torch._inductor.config.force_disable_caches = True
    cfg = dataclasses.replace(base, epochs=float(epochs))
    per_epoch = steps_per_epoch(len(splits.train_x), cfg.batch_size) * cfg.batch_size

    def steady(res) -> float:  # mean training time of epochs 2..n
        t = [r.elapsed_s for r in res.history]
        return (t[-1] - t[0]) / (len(t) - 1)

    print(f"\ntorch.compile: {spec.name} ({complexity(spec).params / 1e6:.2f}M params), {epochs} epochs of "
          f"{per_epoch} images, {'bf16' if cfg.bf16 and device.type == 'cuda' else 'fp32'}, "
          f"{'channels_last' if cfg.nhwc(device) else 'NCHW'}, cudnn.benchmark "
          f"{'on' if torch.backends.cudnn.benchmark else 'off'}; a fresh network per trial")
    trial(warm, splits, dataclasses.replace(cfg, epochs=0.25), device)  # eager kernels and cuDNN warm
    eager, eager_wall = trial(spec, splits, cfg, device)
    t_e = steady(eager)
    rows = [{"mode": "eager", "wall": eager_wall, "steady": t_e, "cost": 0.0, "speedup": 1.0}]
    print(f"{'variant':<36} {'trial wall':>10} {'steady img/s':>12} {'speedup':>8} {'compile cost':>12} "
          f"{'pays off after':>15}")
    print(f"{'eager':<36} {eager_wall:>9.2f}s {per_epoch / t_e:>12,.0f} {1:>7.2f}x {0:>11.2f}s {'-':>15}")
    for mode in modes:
        if time.perf_counter() > deadline:
            print(f"{'compile ' + mode:<36} skipped: the --budget time guard was reached")
            continue
        t0 = time.perf_counter()
        trial(warm, splits, dataclasses.replace(cfg, epochs=0.25), device, compile_mode=mode)
        warm_s = time.perf_counter() - t0
        res, wall = trial(spec, splits, cfg, device, compile_mode=mode)
        t_c = steady(res)
        cost = wall - (eager_wall - epochs * (t_e - t_c))
        gain = 1 - t_c / t_e
        pays = f"{cost / gain:>14.1f}s" if gain > 0 else f"{'never':>15}"
        rows.append({"mode": mode, "wall": wall, "steady": t_c, "cost": cost, "speedup": t_e / t_c,
                     "warm_s": warm_s})
        print(f"{'compile ' + mode:<36} {wall:>9.2f}s {per_epoch / t_c:>12,.0f} {t_e / t_c:>7.2f}x {cost:>11.2f}s "
              f"{pays}   (first compile in the process, other network: {warm_s:.1f} s)")
    for r in rows[1:]:
        print(f"ratio       compile {r['mode']} / eager steady img/s: {r['speedup']:.2f}x "
              f"(compile cost {r['cost']:.1f} s per new network)")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke sizes (always, without CUDA)")
    parser.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds after which the remaining work is skipped (240 on CUDA)")
    parser.add_argument("--only", default="grid,overhead",
                        help="comma-separated sections: grid (with the rule table and probe), overhead, compile")
    parser.add_argument("--compile-modes", default="default",
                        help="torch.compile modes the compile section tries, in order")
    args = parser.parse_args(argv)
    sections = set(args.only.split(","))
    if sections - {"grid", "overhead", "compile"}:
        parser.error(f"--only: unknown section(s) {sorted(sections - {'grid', 'overhead', 'compile'})}; "
                     "use grid, overhead, compile")
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    quick = args.quick or not cuda
    if not cuda:
        set_threads(1)  # see benchmarks/_report.set_threads
    if quick:
        n_train, n_val, size, bs, epochs, cold_epochs, probe_steps = 128, 32, 16, 32, 1.0, 0.25, 2
    else:  # the cifar10 recipe's batch; 32 steps per timed trial
        n_train, n_val, size, bs, epochs, cold_epochs, probe_steps = 16384, 1024, 32, 512, 1.0, 0.25, 5
    budget = args.budget or (240.0 if cuda else 120.0)
    t0 = time.perf_counter()
    nets = archs(quick)
    splits = random_splits(n_train, n_val, size, device)
    base = TrainConfig(epochs=epochs, batch_size=bs, device=str(device))

    print(f"benchmark: GPU trial throughput by cardinality x dtype x memory format x cudnn.benchmark "
          f"(sections: {args.only})")
    print(env_header(device))
    if not cuda:
        print("mode:        CPU smoke run (no CUDA): tiny sizes; bf16 and cudnn.benchmark are ignored on the CPU")
    for size_name, by_card in nets.items():
        for card, spec in by_card.items():
            cx = complexity(spec)
            print(f"network:     {size_name} c={card:<2} {spec.name}: {cx.params / 1e6:.2f}M params, "
                  f"{cx.macs / 1e6:.0f}M MACs/img, group width {group_width(spec)} in stage 1")
    print(f"work:        per configuration a cold trial of {cold_epochs:g} epoch, then a timed trial of {epochs:g} "
          f"epoch = {steps_per_epoch(n_train, bs)} steps of batch {bs} on {n_train} random {size}px images "
          f"resident on {device}; img/s from train_model's training time (validation excluded)")
    print(f"repeats:     1 timed trial per configuration (each a fresh network); time guard {budget:g} s")

    # CUDA context, cuBLAS/cuDNN handles and the allocator come up on a network not measured after
    trial(net(4, stages=1, stem_ch=8, bottleneck_ch=8, input_size=size), splits,
          dataclasses.replace(base, epochs=cold_epochs), device)
    first_size = next(iter(nets))
    if "grid" in sections:
        rows = run_grid(nets, splits, base, device, cold_epochs, t0 + budget)
        rule_table(rows, cuda)
        probe(nets[first_size], splits, base, device, probe_steps, rows, first_size)
        if rows:
            best = max(rows, key=lambda r: r["rate"])
            worst = min(rows, key=lambda r: r["rate"])
            print(f"\nratio       fastest / slowest configuration img/s: {best['rate'] / worst['rate']:.2f}x "
                  f"({best['name']} {'bf16' if best['bf16'] else 'fp32'} {'CL' if best['cl'] else 'NCHW'} "
                  f"bm={'on' if best['bm'] else 'off'} vs {worst['name']} {'bf16' if worst['bf16'] else 'fp32'} "
                  f"{'CL' if worst['cl'] else 'NCHW'} bm={'on' if worst['bm'] else 'off'})")
            # the ~1M-parameter CIFAR ResNeXt: the network closest to 1M parameters, in bf16
            mid = min(rows, key=lambda r: abs(r["params"] - 1e6))
            best_1m = max((r for r in rows if r["name"] == mid["name"] and r["size"] == mid["size"] and r["bf16"]),
                          key=lambda r: r["rate"], default=None)
            if cuda and best_1m:
                print(target(f"~1M-parameter network ({best_1m['name']}, {best_1m['params'] / 1e6:.2f}M) >= "
                             f"{TARGET_1M:,} img/s in bf16", best_1m["rate"] >= TARGET_1M,
                             f"{best_1m['rate']:,.0f} img/s ({'channels_last' if best_1m['cl'] else 'NCHW'}, "
                             f"cudnn.benchmark {'on' if best_1m['bm'] else 'off'})"))
        print(f"elapsed:     {time.perf_counter() - t0:.1f} s for throughput and probe")
    if "compile" in sections:
        compile_spec = nets[list(nets)[-1]][8 if 8 in nets[list(nets)[-1]] else CARDINALITIES[0]]
        warm = net(4, stages=3, stem_ch=16, bottleneck_ch=16, base_width=16, input_size=size)
        compile_cost(warm, compile_spec, splits, dataclasses.replace(base, bf16=cuda), device,
                     epochs=2 if quick else 4, modes=tuple(args.compile_modes.split(",")), deadline=t0 + budget)
    if "overhead" in sections:
        print("\n== per-trial overhead of the study machinery on this device (benchmarks.overhead)\n")
        overhead.main(["--device", str(device), "--trials", "1" if quick else "4", "--rounds", "1"]
                      + (["--current-only"] if quick else []))
    print(f"\ntotal:       {time.perf_counter() - t0:.1f} s")
    print(footer())


if __name__ == "__main__":
    main()
