"""FracBits on digits: mixed precision at the BitOPs of uniform 3-bit vs uniform 3-bit vs the
Hessian (HAWQ-style) allocation; and at the model size of uniform 3-bit weights.

Each seed trains its own float CNN (own stratified split and init). Every quantized model then
gets the same number of SGD epochs from the float weights, SAT weights (centered grid) and PACT
activations, the first layer 8-bit weights with a float input (counted as 8 bits in BitOPs),
the last layer 8-bit weights and inputs:

* uniform W3A3: the budget (its BitOPs, or its bytes).
* FracBits (layer-wise, and kernel-wise: one weight bit-width per output channel): lambdas start
  at 3.5 in [2, 8]; 80% of the epochs search with ``CE + |cost/target - 1|``; then hardening
  (bisection on the rounding offset, greedy fill) to within 1% of the budget, the allocation
  is written as JSON rules, and the rest of the epochs fine-tune at those integer bits.
* HAWQ: bits from Hessian traces (Hutchinson, 64 samples, one batch of 256 training images) of
  the float model, greedy under the same budget, then the same epochs of fine-tuning.

  python -m experiments.fracbits            # 3 seeds, results in experiments/results/fracbits*
  python -m experiments.fracbits --quick    # 1 seed, few epochs (smoke test)
"""

from __future__ import annotations

import argparse
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from compressjax import cost
from compressjax.core import compress, discover
from compressjax.mixed import fracbits as fb
from compressjax.mixed import hawq
from compressjax.mixed import report as mr
from compressjax.train import make_train_step
from compressjax.train.fracbits_step import make_search_step
from experiments import _report
from experiments.adabits import (BATCH, QAT_LR, accuracy, enable_compile_cache, new_state,
                                 qat_optimizer, run_epochs, train_float)

SEARCH_FRACTION = 0.8
BITS_LR = 0.05


def finetune(f, alloc: mr.BitAllocation, variables: dict, epochs: int, seed: int, *,
             first_epoch: int = 0, lr_scale: float = 1.0) -> float:
  """Trains the fixed-bit model of ``alloc`` from ``variables``; returns its test accuracy."""
  model = compress(f.model, mr.rules_from_json(alloc.to_dict()))
  start = fb.init_from_float(model, f.variables, f.example)
  start = fb.transfer(variables, start) if variables is not None else start
  opt = qat_optimizer(epochs, len(f.data.train), lr_scale=lr_scale)
  state = run_epochs(new_state(start, opt, seed), make_train_step(model, opt), f.data.train,
                     epochs=epochs, seed=seed, first_epoch=first_epoch)
  return accuracy(model, state, f.data.test)


def search(f, profile, budget, epochs: int, seed: int, kernel_wise: bool):
  """FracBits search then hardening; returns (allocation, search variables, search epochs)."""
  model = fb.fracbits(f.model, f.example, target_bits=3, kernel_wise=kernel_wise)
  n = max(1, round(SEARCH_FRACTION * epochs))
  opt = qat_optimizer(epochs, len(f.data.train), bits_lr=BITS_LR)
  variables = fb.init_from_float(model, f.variables, f.example)
  step = make_search_step(model, opt, profile, budget, variables["params"])
  state = run_epochs(new_state(variables, opt, seed), step, f.data.train, epochs=n, seed=seed)
  alloc = fb.harden(model, state.params, profile, budget)
  bits = fb.site_bits(model, state.params, profile)
  lam = {f"{p}/{operand}": np.asarray(b[p]).round(2).tolist()
         for operand, b in zip("wa", bits) for p in profile.paths[1:-1]}
  return alloc, state.variables, n, lam


def run_seed(seed: int, epochs: int, float_epochs: int, hawq_samples: int, out_dir: str,
             name: str):
  t0 = time.time()
  f = train_float(seed, float_epochs)
  profile = cost.profile(f.model, f.example[:1])
  paths = [s.name for s in discover(f.model, f.example) if s.has_weight]
  uniform = mr.BitAllocation.uniform(paths, 3)
  budgets = {kind: fb.Budget(target=uniform.cost(profile, fb.Budget(1.0, kind=kind)), kind=kind)
             for kind in ("bitops", "size")}
  records = [{"seed": seed, "method": "float", "budget": "-", "accuracy": f.accuracy}]
  allocs = {"bitops": {"uniform W3A3": uniform}, "size": {}}

  def log(method, kind, acc, alloc, **extra):
    allocs[kind][method] = alloc
    records.append({"seed": seed, "method": method, "budget": kind, "accuracy": acc,
                    "cost": alloc.cost(profile, budgets[kind]), "target": budgets[kind].target,
                    "relative_error": budgets[kind].relative_error(alloc.cost(profile, budgets[kind])),
                    "allocation": alloc.to_dict(), **extra})
    print(f"seed {seed} [{kind}] {method:>22}: {100 * acc:.2f}%  cost "
          f"{100 * records[-1]['relative_error']:+.2f}% vs target  ({time.time() - t0:.0f}s)",
          flush=True)

  log("uniform W3A3", "bitops", finetune(f, uniform, None, epochs, seed), uniform)
  n_images = min(256, len(f.data.train))
  hx, hy = (jnp.asarray(a) for a in f.data.train.take(np.arange(n_images)))
  ft_scale = (1 + math.cos(math.pi * SEARCH_FRACTION)) / 2  # the cosine where the search stopped
  traces = None
  for kind, variants in (("bitops", (False, True)), ("size", (False,))):
    budget = budgets[kind]
    for kernel_wise in variants:
      alloc, variables, n, lam = search(f, profile, budget, epochs, seed, kernel_wise)
      acc = finetune(f, alloc, variables, epochs - n, seed, first_epoch=n, lr_scale=ft_scale)
      log(f"FracBits ({'kernel' if kernel_wise else 'layer'})", kind, acc, alloc,
          search_lambdas=lam, harden=alloc.meta)
    alloc = hawq.hawq_allocation(f.model, f.variables, hx, hy, profile, budget,
                                 key=jax.random.key(seed), num_samples=hawq_samples,
                                 traces=traces)
    traces = alloc.meta["avg_hessian_trace"]  # the same for every budget
    log("HAWQ", kind, finetune(f, alloc, None, epochs, seed), alloc)
  if seed == 0:
    for kind in ("bitops", "size"):
      shown = {**({"uniform W3A3": uniform} if kind == "size" else {}), **allocs[kind]}
      mr.plot(shown, profile, os.path.join(out_dir, f"{name}_bits_{kind}.png"),
              title=f"bits per layer at the {kind} of uniform W3A3 (seed 0)")
      for method, alloc in allocs[kind].items():
        tag = method.lower().replace(" ", "_").replace("(", "").replace(")", "")
        alloc.save(os.path.join(out_dir, f"{name}_alloc_{kind}_{tag}.json"))
  return records, allocs, profile, budgets


def summarize(records, seeds, epochs, float_epochs, out_dir, name, tables):
  methods = list(dict.fromkeys((r["budget"], r["method"]) for r in records if r["method"] != "float"))
  sel = lambda k, m, key: [r[key] for r in records if r["budget"] == k and r["method"] == m]
  rows = []
  for kind, method in methods:
    errs = sel(kind, method, "relative_error")
    rows.append([kind, method, _report.fmt_pct(sel(kind, method, "accuracy")),
                 f"{100 * min(errs):+.2f} .. {100 * max(errs):+.2f}"])
  float_acc = [r["accuracy"] for r in records if r["method"] == "float"]
  md = (f"# FracBits on digits (CNN; {len(seeds)} seeds, mean ± sd, % test accuracy)\n\n"
        f"Float CNN: {_report.fmt_pct(float_acc)} ({float_epochs} epochs). Every quantized model: "
        f"{epochs} epochs of SGD (lr {QAT_LR}, batch {BATCH}) from the float model; FracBits "
        f"searches for {SEARCH_FRACTION:.0%} of them (lambdas: SGD, momentum 0.9, lr {BITS_LR}, "
        "penalty |cost/target - 1|) and fine-tunes the "
        "hardened integer bits for the rest. Budgets: the BitOPs (first-layer input counted at "
        "8 bits) and the model size (bytes) of uniform W3A3 with 8-bit first/last layers.\n\n"
        + _report.markdown_table(["budget", "method", "accuracy", "cost vs budget (min..max over seeds)"], rows)
        + "\n## Bits per layer, seed 0 (w/a; kernel-wise weights as mean[min-max])\n\n"
        + "".join(f"### {kind}\n\n```\n{text}\n```\n\n" for kind, text in tables.items())
        + "## Fractional bits at the end of the search, seed 0 (operand: mean [min, max])\n\n"
        + "".join(f"- [{r['budget']}] {r['method']}: " + ", ".join(
            f"{k} {np.mean(v):.2f} [{np.min(v):.2f}, {np.max(v):.2f}]"
            for k, v in r["search_lambdas"].items()) + "\n"
                  for r in records if r["seed"] == seeds[0] and "search_lambdas" in r))
  data = {"records": records, "seeds": list(seeds), "epochs": epochs, "float_epochs": float_epochs,
          "search_fraction": SEARCH_FRACTION, "bits_lr": BITS_LR, "lr": QAT_LR, "batch_size": BATCH}
  paths = _report.write(name, data, md, out_dir)
  plot(records, methods, float_acc, os.path.join(out_dir, f"{name}.png"))
  print(md)
  return paths


def plot(records, methods, float_acc, path):
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6.5, 3.8))
  for i, (kind, method) in enumerate(methods):
    accs = [100 * r["accuracy"] for r in records if r["budget"] == kind and r["method"] == method]
    ax.bar(i, np.mean(accs), yerr=np.std(accs, ddof=1) if len(accs) > 1 else 0, capsize=3,
           color="C0" if kind == "bitops" else "C1")
    ax.scatter([i] * len(accs), accs, color="k", s=8, zorder=3)
  ax.axhline(100 * np.mean(float_acc), color="k", ls="--", label="float")
  ax.set_xticks(range(len(methods)), [f"{m}\n[{k}]" for k, m in methods], fontsize=7)
  lo = min(100 * r["accuracy"] for r in records)
  ax.set_ylim(max(lo - 3, 0), 100)
  ax.set_ylabel("test accuracy (%)")
  ax.legend(fontsize=8)
  _report.save_figure(fig, path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="1 seed, 2 QAT epochs, 8 HAWQ samples")
  parser.add_argument("--out", default=_report.RESULTS_DIR)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--float-epochs", type=int, default=15)
  parser.add_argument("--epochs", type=int, default=10)
  args = parser.parse_args()
  enable_compile_cache()
  if args.quick:
    seeds, epochs, float_epochs, samples, name = (0,), 2, 2, 8, "fracbits_quick"
  else:
    seeds, epochs, float_epochs, samples, name = (tuple(range(args.seeds)), args.epochs,
                                                  args.float_epochs, 64, "fracbits")
  os.makedirs(args.out, exist_ok=True)
  records, tables = [], {}
  for seed in seeds:
    recs, allocs, profile, budgets = run_seed(seed, epochs, float_epochs, samples, args.out, name)
    records += recs
    if seed == seeds[0]:
      tables = {k: mr.table(a, profile, budgets[k]) for k, a in allocs.items()}
  summarize(records, seeds, epochs, float_epochs, args.out, name, tables)


if __name__ == "__main__":
  main()
