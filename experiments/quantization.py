"""QAT on digits: {DoReFa+PACT, LSQ, SAT} x W/A bits {8, 4, 3, 2}, first/last layer 8-bit.

Each seed trains its own float CNN (own stratified split and init), then fine-tunes one
quantized copy per (method, bits) and reports the accuracy of the exported, served model.

  python -m experiments.quantization                 # 3 seeds, the table in experiments/results/
  python -m experiments.quantization --quick         # 1 seed, 2 bit-widths, 1 epoch (CI-sized)
  python -m experiments.quantization --seeds 1 --partial   # one seed's records only, then
  python -m experiments.quantization --merge         # the table from all partial records
  python -m experiments.quantization --every-layer   # W2A2 and binary weights on every layer,
                                                     # 5 seeds: quantization_every_layer.*
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from compressjax.config import get_config
from compressjax.data import load_dataset
from compressjax.quant.recipes import METHODS as ALL_METHODS
from compressjax.runs import quantize_classifier, train_classifier
from experiments import _report
from experiments.collapse import every_layer

METHODS = tuple(m for m in ALL_METHODS if m != "uniform")
# Every layer quantized (first conv and classifier too): W2A2 for the methods that train there
# (collapse.md: `sat`'s modified grid stays at chance), and binary weights (W1A2) for DoReFa,
# the one recipe defining 1-bit weights (sign(w) * E|w|).
EVERY_LAYER = (("dorefa_pact", 1, 2), ("dorefa_pact", 2, 2), ("lsq", 2, 2), ("sat_centered", 2, 2))

NOTES = """
Notes (measured, see the JSON for every run):
- `sat` uses SAT's "modified" weight grid `min(floor(2^b x), 2^b - 1) / 2^b`, whose levels have
  a mean shift of -2^-b. In the BN-free `hidden` Dense layer that bias drives every
  pre-activation below zero at 3 bits (checked on the seed-0 float model with float
  activations and 3-bit weights: 0% of `hidden` pre-activations are positive, mean -15.9; the
  logits have std 0.02 and the kernel gradients are exactly 0), so training never starts
  (chance accuracy on all seeds). `sat_centered` (the later centered grid, +1/2 before dividing)
  trains normally at 3 and 2 bits.
- The quantized models are evaluated after export: the accuracy is that of packed integer
  weights on each site's serving path (``compressjax.export.serving_paths``: int8 dot/conv,
  low-bit kernel or XLA dequantize), equal to the fake-quant model's.
"""


def train_seed(seed, bits_list, float_epochs, qat_epochs, save=None, methods=METHODS,
               settings=None, all_layers=False):
  """All records of one seed: its float model and one QAT run per (method, w_bits, a_bits)
  of ``settings`` (default: each method at W{b}A{b} for ``bits_list``); ``all_layers``
  quantizes the first and last layer too (else they stay at 8 bits).

  ``save(records)`` is called after every run, so an interrupted seed keeps what it finished.
  """
  settings = settings or [(m, b, b) for m in methods for b in bits_list]
  records = []
  save = save or (lambda _: None)
  with tempfile.TemporaryDirectory() as tmp:
    common = [f"train.seed={seed}", f"data.split_seed={seed}"]
    float_cfg = get_config("digits_cnn", common + [f"train.epochs={float_epochs}"])
    float_dir = os.path.join(tmp, "float")
    base = train_classifier(float_cfg, float_dir)
    records.append({"seed": seed, "method": "float", "bits": 32, "accuracy": base["test_accuracy"]})
    save(records)
    qat = common + [f"train.epochs={qat_epochs}", "optim.lr=0.02", f"quant.init_from={float_dir}"]
    for method, w_bits, a_bits in settings:
      recipe = [f"quant.method={method}", f"quant.w_bits={w_bits}", f"quant.a_bits={a_bits}"]
      cfg = get_config("digits_cnn", qat + recipe)
      out = quantize_classifier(every_layer(cfg) if all_layers else cfg,
                                os.path.join(tmp, f"{method}{w_bits}{a_bits}"))
      print(f"seed {seed} {method} W{w_bits}A{a_bits}: served "
            f"{100 * out['served_accuracy']:.2f}%", flush=True)
      records.append({"seed": seed, "method": method, "bits": w_bits, "w_bits": w_bits,
                      "a_bits": a_bits, "accuracy": out["served_accuracy"],
                      "fake_quant_accuracy": out["fake_quant_accuracy"],
                      "bytes": out["quantized_bytes"], "float_bytes": out["float_bytes"],
                      "test_images": len(load_dataset("digits", split_seed=seed).test.y)})
      save(records)
  return records


def report(records, bits_list, float_epochs, qat_epochs, out_dir, name):
  """JSON, Markdown table and PNG plot of ``records`` (mean ± sd over seeds)."""
  seeds = sorted({r["seed"] for r in records})
  acc = lambda m, b: [r["accuracy"] for r in records if r["method"] == m and r["bits"] == b]
  rows = [["float (32)", _report.fmt_pct(acc("float", 32))] + [""] * (len(bits_list) - 1)]
  rows += [[m] + [_report.fmt_pct(acc(m, b)) for b in bits_list] for m in METHODS]
  md = (f"# QAT on digits (CNN, first/last layer 8-bit, {len(seeds)} seeds, mean ± sd, % test "
        f"accuracy of the exported model; float {float_epochs} epochs, QAT {qat_epochs} epochs)\n\n"
        + _report.markdown_table(["method"] + [f"W{b}A{b}" for b in bits_list], rows) + NOTES)
  paths = _report.write(name, {"records": records, "seeds": seeds, "bits": list(bits_list),
                               "float_epochs": float_epochs, "qat_epochs": qat_epochs}, md, out_dir)
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for m in METHODS:
    means = [_report.mean_sd(acc(m, b)) for b in bits_list]
    ax.errorbar(bits_list, [100 * mu for mu, _ in means], yerr=[100 * sd for _, sd in means],
                marker="o", capsize=3, label=m)
  ax.axhline(100 * _report.mean_sd(acc("float", 32))[0], color="k", ls="--", label="float")
  ax.set_xlabel("weight / activation bits")
  ax.set_ylabel("test accuracy (%)")
  ax.invert_xaxis()
  ax.legend()
  _report.save_figure(fig, os.path.join(out_dir, f"{name}.png"))
  print(md)
  return paths


def report_every_layer(records, float_epochs, qat_epochs, out_dir, name="quantization_every_layer"):
  """JSON, Markdown and PNG of the every-layer runs: served accuracy mean ± sd per setting, and
  whether each lies within one sd (the best setting's) of the best mean."""
  seeds = sorted({r["seed"] for r in records})
  acc = lambda s: [r["accuracy"] for r in records
                   if (r["method"], r.get("w_bits"), r.get("a_bits")) == s]
  done = [s for s in EVERY_LAYER if acc(s)]
  if not done:  # only float models so far
    return None, ""
  stats = {s: _report.mean_sd(acc(s)) for s in done}
  best = max(done, key=lambda s: stats[s][0])
  floats = [r["accuracy"] for r in records if r["method"] == "float"]
  within = lambda s: ("best" if s == best else
                      "yes" if stats[best][0] - stats[s][0] <= stats[best][1] else "no")
  rows = [["float (32)", "-", _report.fmt_pct(floats), ""]]
  rows += [[m, f"W{w}A{a}", _report.fmt_pct(acc((m, w, a))), within((m, w, a))]
           for m, w, a in done]
  n_test = next((r["test_images"] for r in records if r.get("test_images")), None)
  size = (f"{n_test} test images: one image = {100 / n_test:.2f} points" if n_test
          else "test split size not recorded")
  md = (f"# QAT on digits, every layer quantized (first conv and classifier too), "
        f"{len(seeds)} seeds\n\nMean ± sd over seeds of the served (exported) model's test "
        f"accuracy (%); each seed its own stratified split ({size}) and float model; float "
        f"{float_epochs} epochs, QAT {qat_epochs} epochs (SGD lr 0.02). W1: binary weights "
        "(DoReFa's sign(w) E|w|). Last column: whether the mean lies within one sd (the best "
        "setting's) of the best mean.\n\n"
        + _report.markdown_table(["method", "bits", "test accuracy (%)",
                                  "within 1 sd of the best"], rows)
        + f"\n`python -m experiments.quantization --every-layer --seeds "
        f"{' '.join(map(str, seeds))}`\n")
  paths = _report.write(name, {"records": records, "seeds": seeds, "settings": done,
                               "float_epochs": float_epochs, "qat_epochs": qat_epochs,
                               "edge_bits": None}, md, out_dir)
  fig, ax = plt.subplots(figsize=(5, 3.2))
  ax.bar(range(len(done)), [100 * stats[s][0] for s in done],
         yerr=[100 * stats[s][1] for s in done], capsize=4)
  ax.axhline(100 * _report.mean_sd(floats)[0], color="k", ls="--", label="float")
  ax.set_xticks(range(len(done)), [f"{m}\nW{w}A{a}" for m, w, a in done], fontsize=7)
  ax.set_ylabel("served test accuracy (%)")
  ax.set_title("every layer quantized")
  ax.legend(fontsize=8)
  _report.save_figure(fig, os.path.join(out_dir, f"{name}.png"))
  return paths, md


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
  parser.add_argument("--partial", action="store_true", help="write this run's records only")
  parser.add_argument("--merge", action="store_true", help="report all partial records")
  parser.add_argument("--every-layer", action="store_true",
                      help="EVERY_LAYER settings, no layer kept at 8 bits (--seeds 0 1 2 3 4)")
  parser.add_argument("--out", default=_report.RESULTS_DIR)
  args = parser.parse_args()
  if args.every_layer:
    records = []
    for seed in args.seeds:
      done = list(records)
      records = done + train_seed(
          seed, (), 15, 3, lambda recs, done=done: report_every_layer(done + recs, 15, 3, args.out),
          settings=EVERY_LAYER, all_layers=True)
    print(report_every_layer(records, 15, 3, args.out)[1])
    return
  if args.quick:
    report(train_seed(0, (8, 2), 2, 1), (8, 2), 2, 1, args.out, "quantization_quick")
    return
  bits, float_epochs, qat_epochs = (8, 4, 3, 2), 15, 3
  partial_dir = os.path.join(args.out, "quantization_partial")
  if args.merge:
    records = []
    for f in sorted(os.listdir(partial_dir)):
      with open(os.path.join(partial_dir, f)) as fh:
        records += json.load(fh)
    # Each partial run retrains its seed's float model (deterministic): keep one record per key.
    records = list({(r["seed"], r["method"], r["bits"]): r for r in records}.values())
  elif args.partial:
    os.makedirs(partial_dir, exist_ok=True)
    tag = "_".join(map(str, args.seeds)) + ("" if args.methods == list(METHODS) else
                                            "_" + "_".join(args.methods))
    path = os.path.join(partial_dir, f"seeds{tag}.json")

    def save(records):
      with open(path, "w") as f:
        json.dump(records, f, indent=2)

    for seed in args.seeds:
      train_seed(seed, bits, float_epochs, qat_epochs, save, args.methods)
    return
  else:
    records = [r for seed in args.seeds
               for r in train_seed(seed, bits, float_epochs, qat_epochs, methods=args.methods)]
  report(records, bits, float_epochs, qat_epochs, args.out, "quantization")


if __name__ == "__main__":
  main()
