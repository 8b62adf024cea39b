"""Methods that never collapse: QAT on digits with EVERY layer quantized, first and last too.

Each seed trains its own float CNN (own stratified split and init), then fine-tunes one copy per
(method, bits) at W2A2, W3A3, W4A4 through the project's QAT-from-float entry point
(:func:`compressjax.runs.quantize_classifier`), with ``edge_bits=None``: the first conv
reads quantized images and the classifier quantized features. Reported: the test accuracy
right after init-from-float (fake-quant, before any QAT step: clip levels and steps come from
the init batch's statistics) and of the exported, served model after QAT.

  python -m experiments.collapse           # 3 seeds, the table in experiments/results/collapse.*
  python -m experiments.collapse --quick   # 1 seed, W2A2 only, short training
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from compressjax.config import Config, apply_overrides, get_config
from compressjax.runs import quantize_classifier, setup, train_classifier
from compressjax.train.evaluate import evaluate
from compressjax.train.steps import make_eval_step
from experiments import _report

METHODS = ("dorefa_pact", "lsq", "sat", "sat_centered")
BITS = (2, 3, 4)
QAT_EPOCHS = 10  # the same for every method; 3 left sat_centered at 94.2 +- 1.6 (W2A2 served)

NOTES = """
What changed since the first run (measured on the seed-0 float model, W2A2, init accuracy
before any QAT step unless said otherwise; `python -m experiments.collapse` for the table):
- `sat` reads its weights on the modified grid's codes with a mean-free zero point
  (`SAT(zero_point="mean")`: the codes' mean under stop_gradient, exported as the same integer
  codes with a float zero point; served == fake-quant). The paper's zero point `2^(b-1)` gives
  most weights Q in {-2^(1-b), 0}: a sign plus a mean shift as large as it, which sums coherently
  over non-negative (post-ReLU) inputs, so every channel gets the same feature and the model sat
  at chance at W2A2 and W3A3 (10.1% served, 3 seeds, 3 QAT epochs). With the mean removed: init
  9.7% -> 74.4%, served after 3 QAT epochs 10.3% -> 95.5%.
- QAT runs 10 epochs for every method (was 3; issue 14 asked for 10): seed 0 served at W2A2
  sat_centered 94.2% -> 97.8%, sat 95.5% -> 97.8%; 3 epochs left sat_centered at
  94.15 ± 1.55 (3 seeds).
- Init-from-float recomputes BatchNorm statistics on the init batch under the quantized weights
  (`compressjax.core.bn_recalibrate`): SAT's variance rule and DoReFa's [-1, 1] weights no longer
  meet the float running statistics (before: sat_centered init 10.2% at W2A2..W4A4).
- Every recipe reads the network input (standardised images, background -0.81) through LSQ+,
  as `lsq` already did: PACT's calibrated-sign grid put the background on code 0 (init
  dorefa_pact 74.7% -> 88.0%, sat_centered 43.7% -> 70.2%).
- Served == fake-quant: the int8 conv padded its input with code 0, which is not 0.0 when the
  activation quantizer has a zero point (calibrated-sign PACT, LSQ+): dorefa_pact W2A2 exported
  right after init served 42.6% where its fake-quant model scored 74.7%; export now adds the
  padded positions back (served == fake-quant to 2e-5 in every logit).
- Tried and not adopted (seed 0, W2A2, 3 QAT epochs, served): per-channel max|tanh w| for SAT
  weights raises init (sat 74.4% -> 89.1%, sat_centered 74.9% -> 88.0%) but not the served
  accuracy (95.3% vs 95.5%, 92.2% vs 94.2%); a per-output-channel mean zero point (init 75.2%;
  with per-channel max: init 85.5%, served 95.0%); DoReFa weights rescaled to max|tanh w|
  (init 86.6% vs 88.0%, served 95.5% vs 97.2%).
"""
GOALS = {"lsq": 0.98}  # issue 14: W2A2 served mean >= 95% for every method, >= 98% for lsq
GOAL = 0.95


def goals(records, methods) -> str:
  """Issue 14's W2A2 goals against the records' served means (what the table shows)."""
  lines = ["", "Goals (issue 14, W2A2 served, mean over seeds):"]
  for m in methods:
    served = [r["accuracy"] for r in records if r["method"] == m and r["bits"] == 2]
    if not served:
      lines.append(f"- {m}: not run at W2A2")
      continue
    mu, goal = _report.mean_sd(served)[0], GOALS.get(m, GOAL)
    lines.append(f"- {m}: {100 * mu:.2f}% vs >= {100 * goal:.0f}%: "
                 f"{'met' if mu >= goal else 'NOT met'} (n={len(served)})")
  return "\n".join(lines) + "\n"


def every_layer(cfg: Config) -> Config:
  """``cfg`` with ``quant.edge_bits=None``: no layer keeps higher precision."""
  return apply_overrides(cfg, ["quant.edge_bits=none"])


def init_accuracy(cfg: Config) -> float:
  """Test accuracy of the quantized model as initialised from the float run (no QAT step)."""
  s = setup(cfg)
  return evaluate(make_eval_step(s.model), s.state, s.dataset.test,
                  cfg.train.batch_size)["accuracy"]


def run(seeds, bits_list, methods, float_epochs, qat_epochs, save):
  """Records: one float model per seed, then init and served accuracy per (bits, method, seed).

  Bit-widths are the outer loop, so an interrupted run has whole rows (all seeds) done first;
  ``save(records)`` is called after every run.
  """
  records = []
  with tempfile.TemporaryDirectory() as tmp:
    common = lambda seed: [f"train.seed={seed}", f"data.split_seed={seed}"]
    float_dir = lambda seed: os.path.join(tmp, f"float{seed}")
    for seed in seeds:
      base = train_classifier(get_config("digits_cnn", common(seed) + [
          f"train.epochs={float_epochs}"]), float_dir(seed))
      records.append({"seed": seed, "method": "float", "bits": 32,
                      "accuracy": base["test_accuracy"]})
      save(records)
    for bits in bits_list:
      for method in methods:
        for seed in seeds:
          t0 = time.time()
          cfg = every_layer(get_config("digits_cnn", common(seed) + [
              f"train.epochs={qat_epochs}", "optim.lr=0.02", f"quant.init_from={float_dir(seed)}",
              f"quant.method={method}", f"quant.w_bits={bits}", f"quant.a_bits={bits}"]))
          at_init = init_accuracy(cfg)
          out = quantize_classifier(cfg, os.path.join(tmp, f"{method}{bits}_{seed}"))
          records.append({"seed": seed, "method": method, "bits": bits,
                           "accuracy": out["served_accuracy"],
                           "fake_quant_accuracy": out["fake_quant_accuracy"],
                           "init_accuracy": at_init, "bytes": out["quantized_bytes"],
                           "time_s": round(time.time() - t0, 1)})
          print(f"seed {seed} {method} W{bits}A{bits}: init {100 * at_init:.2f}%, served "
                f"{100 * out['served_accuracy']:.2f}% ({time.time() - t0:.0f} s)", flush=True)
          save(records)
  return records


def report(records, bits_list, methods, float_epochs, qat_epochs, out_dir, name):
  """JSON, Markdown table and PNG (served after QAT, and right after init; mean ± sd)."""
  seeds = sorted({r["seed"] for r in records})
  pick = lambda m, b, key: [r[key] for r in records if r["method"] == m and r["bits"] == b]
  header = ["method"] + [f"W{b}A{b} {what}" for b in bits_list for what in ("init", "served")]
  rows = [["float (32)", "", _report.fmt_pct(pick("float", 32, "accuracy"))]
          + [""] * (2 * len(bits_list) - 2)]
  rows += [[m] + [_report.fmt_pct(pick(m, b, key)) for b in bits_list
                  for key in ("init_accuracy", "accuracy")] for m in methods]
  md = (f"# QAT on digits with every layer quantized (first and last too; {len(seeds)} seed(s), "
        f"mean ± sd, % test accuracy; float {float_epochs} epochs, QAT {qat_epochs} epochs)\n\n"
        "`init`: fake-quant model right after init-from-float (clip levels / steps from the "
        "init batch), before any QAT step. `served`: the exported integer model after QAT.\n\n"
        + _report.markdown_table(header, rows) + NOTES + goals(records, methods))
  paths = _report.write(name, {"records": records, "seeds": seeds, "bits": list(bits_list),
                               "methods": list(methods), "float_epochs": float_epochs,
                               "qat_epochs": qat_epochs, "edge_bits": None}, md, out_dir)
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for i, m in enumerate(methods):
    for key, style in (("accuracy", "-"), ("init_accuracy", ":")):
      stats = [_report.mean_sd(pick(m, b, key)) if pick(m, b, key) else (float("nan"), 0.0)
               for b in bits_list]
      ax.errorbar(bits_list, [100 * mu for mu, _ in stats], yerr=[100 * sd for _, sd in stats],
                  marker="o", capsize=3, ls=style, color=f"C{i}",
                  label=m if key == "accuracy" else None)
  ax.axhline(100 * _report.mean_sd(pick("float", 32, "accuracy"))[0], color="k", ls="--",
             label="float")
  ax.set_xlabel("weight / activation bits (every layer)")
  ax.set_ylabel("test accuracy (%)  (dotted: at init)")
  ax.set_xticks(list(bits_list))
  ax.legend(fontsize=8)
  _report.save_figure(fig, os.path.join(out_dir, f"{name}.png"))
  return paths, md


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="1 seed, W2A2, short training")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--bits", type=int, nargs="+", default=list(BITS), choices=BITS)
  parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
  parser.add_argument("--out", default=_report.RESULTS_DIR)
  parser.add_argument("--report-only", action="store_true",
                      help="rewrite the Markdown/PNG from the saved JSON records (no training)")
  args = parser.parse_args()
  if args.quick:
    seeds, bits, float_epochs, qat_epochs, name = [0], [2], 5, 1, "collapse_quick"
  else:
    seeds, bits, float_epochs, qat_epochs, name = args.seeds, args.bits, 15, QAT_EPOCHS, "collapse"
  save = lambda records: report(records, bits, args.methods, float_epochs, qat_epochs, args.out,
                                name)
  if args.report_only:  # the table and notes again from the saved records, nothing trained
    with open(os.path.join(args.out, f"{name}.json")) as f:
      saved = json.load(f)
    bits, float_epochs, qat_epochs = saved["bits"], saved["float_epochs"], saved["qat_epochs"]
    print(report(saved["records"], bits, saved["methods"], float_epochs, qat_epochs, args.out,
                 name)[1])
    return
  print(save(run(seeds, bits, args.methods, float_epochs, qat_epochs, save))[1])


if __name__ == "__main__":
  main()
