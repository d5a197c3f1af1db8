"""Label audit with planted noise: does audit.py find flipped labels, and does removing them help?

    python benchmarks/label_audit.py [--work benchmarks/work/label_audit] [--folds 5] [--repeats 5] [--steps 160]
    python benchmarks/label_audit.py --audit_rounds 2 --keyword_per_class 32,64 --noise 0.1,0.2 --skip_tnews \
        --work benchmarks/work/label_audit_rounds --results benchmarks/results_label_audit_rounds.json
        # the keyword rows again with a second round (fixed before it ran: QUALITY.md section 3)
    python benchmarks/label_audit.py --audit_rounds 3 --keyword_per_class 32,64 --noise 0.1,0.2 --skip_tnews \
        --work benchmarks/work/label_audit_rounds --results benchmarks/results_label_audit_rounds3.json
        # and a third round on the same folders (rounds 1 and 2 reused), fixed before it ran
    python benchmarks/label_audit.py --audit_rounds 4 --keyword_per_class 32,64 --noise 0.1,0.2 --skip_tnews \
        --work benchmarks/work/label_audit_rounds --results benchmarks/results_label_audit_rounds4.json
        # a fourth (rounds 1-3 reused), with the "minus planted" ceiling, fixed before it ran
    python benchmarks/label_audit.py --audit_rounds 4 --keyword_per_class 32 --noise 0.1,0.2 --skip_tnews \
        --train_seeds 42,43,44,45,46,47,48,49,50,51 --work benchmarks/work/label_audit_rounds \
        --results benchmarks/results_label_audit_rounds4_10seeds.json
        # the 96-text rows' accuracies over 10 training seeds (the audits reused), fixed before it ran: with 3
        # seeds, removing the 21 flagged lines (19 flips) read 97% and removing exactly the 19 flips 79%
        [--tnews_steps 100] [--keyword_per_class 32,64] [--test_per_class 100] [--noise 0.1,0.2]
        [--relabel_threshold 0.5] [--skip_tnews]
    nice -n 19 python benchmarks/label_audit.py --tnews_model benchmarks/work/proxy/full/proxy --skip_keyword \
        --noise 0.1 --repeats 1 --train_seeds 42,43 --tnews_steps 200 --reuse     # tnews on QUALITY.md section 1's proxy (rows "tnews-proxy")

For the keyword task (utils/testing/synthetic.py, 96 and 192 training texts, 3 labels, a fixed seeded
test.txt of --test_per_class texts per label, the same for every run of a size) and, when
../shared/data/fewclue/tnews exists, FewCLUE tnews (240 training texts, 15 labels), at 10% and 20%
noise: flip that share of train.txt's labels (seeded, utils.testing.synthetic.flip_labels), run
audit.py (--folds, --repeats: the out-of-fold probabilities averaged over that many fold splits and
seeds), and report

* precision and recall at k = the number of planted flips: the k lowest label-quality scores
  (cleanlab's, over every audited example) against the planted lines; and of the flagged set
  (label_issues.tsv: what confident learning flags, any size);
* test accuracy of train.py trained on the noisy train.txt, on the noisy one minus the flagged lines,
  on the noisy one minus exactly the planted lines ("minus planted": what a perfect audit's removal
  would give, the ceiling of removal, which no audit reaches), on the noisy one "relabelled" (a flagged
  line whose suggested label has an out-of-fold probability of at least --relabel_threshold takes that
  label, the other flagged lines are removed), and on the clean
  one (same flags; the mean over --train_seeds, default 42,43,44, since one run of the tiny model swings
  by several points with the seed; the clean runs of a size are shared by its noise levels), and the
  share of the noisy-to-clean gap (of those means) that each remedy recovers.

The model is the tiny random ERNIE (2 layers, hidden 64; the keyword task's own vocab, tnews: the real
40k ERNIE 3.0 vocab) on CPU, P-tuning: the keyword task is learnable by it, tnews is not (near chance),
so tnews only shows that the pipeline runs at a real label count. With --tnews_model (section 1's proxy,
built by `benchmarks/proxy_quality.py --build_only`) the tnews rows are named `tnews-proxy` and train with
section 1's flags (--max_seq_length 64, learning rates 1e-4 / 1e-3, batch 16, --tnews_steps, default 100). Writes results_label_audit.json (rows
of an earlier run whose data and noise this run does not cover are kept, with a note saying so) and
prints a Markdown table for QUALITY.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.environ.get("PTUNING_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
TNEWS = os.path.join(SHARED, "data", "fewclue", "tnews")
VOCAB = os.path.join(SHARED, "vocab", "ernie-3.0-base-zh-vocab.txt")
NOISE = (0.1, 0.2)
REUSE = False  # --reuse: a finished audit or training run (its audit.json / test_results.json) is kept
FAST = ["--max_seq_length", "40", "--learning_rate", "1e-3", "--ppt_learning_rate", "3e-3",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "32", "--seed", "42"]


def tiny_models(work):
    from utils.testing import synthetic
    from utils.testing.tiny_ernie import build_ernie, vocab_from_texts

    keyword = os.path.join(work, "tiny-keyword")
    if not os.path.isdir(keyword):
        build_ernie(keyword, vocab_from_texts(synthetic.vocab_texts()), seed=0)
    tnews = os.path.join(work, "tiny-40k")
    if os.path.isfile(VOCAB) and not os.path.isdir(tnews):
        with open(VOCAB, encoding="utf-8") as fp:
            build_ernie(tnews, [line.rstrip("\n") for line in fp if line.strip()], seed=0)
    return keyword, tnews


def data_copy(source, target, fraction, seed):
    """`target`: label.txt, train.txt, dev.txt and test.txt copied, `fraction` of train.txt's labels flipped."""
    from utils.testing.synthetic import flip_labels

    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    for name in ("label.txt", "train.txt", "dev.txt", "test.txt"):
        shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
    return flip_labels(os.path.join(target, "train.txt"), fraction, seed) if fraction else {}


def without_lines(source, target, lines, relabel=None):
    """`source` copied to `target` without train.txt's `lines`; `relabel` (line: label) gives those lines
    that label instead of removing them."""
    relabel = relabel or {}
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    with open(os.path.join(source, "train.txt"), encoding="utf-8") as fp:
        kept = [line.rsplit("\t", 1)[0] + "\t" + relabel[number] + "\n" if number in relabel else line
                for number, line in enumerate(fp, 1) if number not in lines or number in relabel]
    with open(os.path.join(target, "train.txt"), "w", encoding="utf-8") as fp:
        fp.writelines(kept)


def confident_suggestions(out, threshold):
    """The flagged lines (label_issues.tsv) whose suggested label has an out-of-fold probability of at least
    `threshold`: line number -> suggested label."""
    with open(os.path.join(out, "label_issues.tsv"), encoding="utf-8") as fp:
        header, *rows = [line.rstrip("\n").split("\t") for line in fp]
    column = {name: i for i, name in enumerate(header)}
    return {int(r[0].rsplit(":", 1)[1]): r[column["suggested"]] for r in rows
            if float(r[column["p_suggested"]]) >= threshold}


def train_accuracy(model, data_dir, out, flags, reuse=False):
    """train.py's test accuracy (`reuse`: the run's earlier result when it finished: the clean runs of a size
    are the same for every noise level)."""
    import train
    from utils.errors import run_cli

    if (reuse or REUSE) and os.path.isfile(os.path.join(out, "test_results.json")):
        with open(os.path.join(out, "test_results.json"), encoding="utf-8") as fp:
            return json.load(fp)["test_accuracy"]

    argv = ["--model_name_or_path", model, "--data_dir", data_dir, "--output_dir", out, "--do_train", "--do_eval",
            "--do_predict", "--overwrite_output_dir", "--save_total_limit", "1", *flags]
    assert run_cli(train.main, argv) == 0, argv
    with open(os.path.join(out, "test_results.json"), encoding="utf-8") as fp:
        return json.load(fp)["test_accuracy"]


def audit_numbers(out, planted):
    """Precision/recall at k = len(planted) over the whole ranking, and of the flagged set."""
    import numpy as np

    from utils.audit.issues import quality_scores

    with open(os.path.join(out, "oof_probabilities.tsv"), encoding="utf-8") as fp:
        rows = [line.rstrip("\n").split("\t") for line in fp]
    labels, rows = rows[0][2:], rows[1:]
    lines = [int(r[0].rsplit(":", 1)[1]) for r in rows]
    given = [[labels.index(r[1])] for r in rows]
    probs = np.array([[float(x) for x in r[2:]] for r in rows])
    scores = quality_scores(given, probs, "multi-class")
    k = len(planted)
    top = {lines[i] for i in np.argsort(scores, kind="stable")[:k]}
    with open(os.path.join(out, "label_issues.tsv"), encoding="utf-8") as fp:
        flagged = {int(line.split("\t")[0].rsplit(":", 1)[1]) for line in list(fp)[1:]}
    hits = len(flagged & set(planted))
    true = [labels.index(planted.get(line, labels[g[0]])) for line, g in zip(lines, given)]
    return {"k": k, "precision_at_k": len(top & set(planted)) / k, "recall_at_k": len(top & set(planted)) / k,
            "flagged": len(flagged), "flagged_precision": hits / len(flagged) if flagged else None,
            "flagged_recall": hits / k, "oof_accuracy": float((probs.argmax(1) == [g[0] for g in given]).mean()),
            "oof_accuracy_true": float((probs.argmax(1) == true).mean())}, \
        flagged


def precision_by_repeats(out, planted, repeats, round_=1):
    """P@k (k = len(planted)) of the first r repeats' averaged probabilities, r = 1..repeats: what each
    further repeat adds (read from round `round_`'s folds' oof.json, whose rows are oof_probabilities.tsv's)."""
    import glob

    import numpy as np

    from utils.audit.issues import quality_scores

    with open(os.path.join(out, "oof_probabilities.tsv"), encoding="utf-8") as fp:
        rows = [line.rstrip("\n").split("\t") for line in fp]
    labels, given = rows[0][2:], [[rows[0][2:].index(r[1])] for r in rows[1:]]
    lines = [int(r[0].rsplit(":", 1)[1]) for r in rows[1:]]
    total, precision = np.zeros((len(given), len(labels))), []
    for repeat in range(1, repeats + 1):
        folder = os.path.join(out, "folds", *([f"round-{round_}"] if round_ > 1 else []),
                              *([f"repeat-{repeat}"] if repeat > 1 else []))
        for path in glob.glob(os.path.join(folder, "fold-*", "oof.json")):
            with open(path, encoding="utf-8") as fp:
                done = json.load(fp)
            total[done["rows"]] += np.asarray(done["probabilities"])
        top = np.argsort(quality_scores(given, total / repeat, "multi-class"), kind="stable")[:len(planted)]
        precision.append(len({lines[i] for i in top} & set(planted)) / len(planted))
    return precision


def with_seed(flags, seed):
    flags = list(flags)
    flags[flags.index("--seed") + 1] = str(seed)
    return flags


def audited(name, model, source, fraction, work, flags, folds, repeats, rounds=1):
    """The noisy data, its audit and the audit's numbers against the planted flips (`rounds`: audit.py
    --audit_rounds; the numbers are the last round's, P@k by repeats each round's)."""
    import audit
    from utils.errors import run_cli

    base = os.path.join(work, f"{name}-{int(fraction * 100)}")
    noisy = os.path.join(base, "data-noisy")
    planted = data_copy(source, noisy, fraction, seed=1)
    out = os.path.join(base, "audit")
    start = time.time()
    argv = ["--data_dir", noisy, "--output_dir", out, "--folds", str(folds), "--repeats", str(repeats),
            *(["--audit_rounds", str(rounds)] if rounds > 1 else []),
            "--model_name_or_path", model, *flags]
    if not (REUSE and os.path.isfile(os.path.join(out, "audit.json"))):   # the flips are seeded: same data
        # the same settings reuse the finished folds (more rounds or repeats train only what is new); other
        # settings are refused by audit.py, and then everything is redone
        if run_cli(audit.main, argv) != 0:
            assert run_cli(audit.main, argv + ["--overwrite_output_dir"]) == 0
    numbers, flagged = audit_numbers(out, planted)
    with open(os.path.join(out, "audit.json"), encoding="utf-8") as fp:
        summary = json.load(fp)
    numbers.update(oof_accuracy_per_repeat=summary.get("oof_accuracy_per_repeat"), audit_rounds=rounds,
                   rounds=summary.get("rounds"), audit_seconds=round(time.time() - start),
                   command="python audit.py " + " ".join(argv),
                   precision_at_k_by_repeats=precision_by_repeats(out, planted, repeats, rounds))
    if rounds > 1:
        numbers["precision_at_k_by_round"] = [precision_by_repeats(out, planted, repeats, r)[-1]
                                              for r in range(1, rounds + 1)]
    return base, noisy, out, planted, numbers, flagged


def one_case(name, model, source, fraction, work, flags, folds, train_seeds=(42,), repeats=1, threshold=0.5,
             rounds=1):
    base, noisy, out, planted, numbers, flagged = audited(name, model, source, fraction, work, flags, folds, repeats,
                                                          rounds)
    cleaned = os.path.join(base, "data-minus-flagged")
    without_lines(noisy, cleaned, flagged)
    relabel = confident_suggestions(out, threshold)
    relabelled = os.path.join(base, "data-relabelled")
    without_lines(noisy, relabelled, flagged, relabel)
    clean = os.path.join(work, f"{name}-clean", "data-clean")   # one per data set: the same for every noise level
    data_copy(source, clean, 0, 0)
    oracle = os.path.join(base, "data-minus-planted")   # removal's ceiling: every flip and only the flips removed
    without_lines(noisy, oracle, set(planted))
    runs = (("noisy", noisy, base), ("minus_flagged", cleaned, base), ("relabelled", relabelled, base),
            ("minus_planted", oracle, base), ("clean", clean, os.path.dirname(clean)))
    per_seed = {kind: [train_accuracy(model, data, os.path.join(where, f"train-{kind}-seed{seed}"),
                                      with_seed(flags, seed), reuse=kind == "clean") for seed in train_seeds]
                for kind, data, where in runs}
    accuracy = {kind: sum(values) / len(values) for kind, values in per_seed.items()}   # the mean over the seeds
    gap = accuracy["clean"] - accuracy["noisy"]
    recovered = {kind: (accuracy[kind] - accuracy["noisy"]) / gap if gap > 0 else None
                 for kind in ("minus_flagged", "relabelled", "minus_planted")}
    with open(os.path.join(source, "test.txt"), encoding="utf-8") as fp:
        test_size = sum(1 for line in fp if line.strip())
    right = sum(planted.get(line) == label for line, label in relabel.items())
    return {"dataset": name, "noise": fraction, "repeats": repeats, **numbers, "test_size": test_size,
            "accuracy": accuracy, "train_seeds": list(train_seeds), "accuracy_per_seed": per_seed,
            "gap_recovered": recovered["minus_flagged"], "gap_recovered_relabelled": recovered["relabelled"],
            "gap_recovered_minus_planted": recovered["minus_planted"],
            "relabel_threshold": threshold, "relabelled": len(relabel),
            "relabelled_right": right, "relabelled_removed": len(flagged) - len(relabel)}


def recovered(r, key):
    a = r["accuracy"]
    points = 100 * (a["clean"] - a["noisy"])
    if key not in r:
        return "–"            # a row of a run before this remedy was measured
    return "– (no gap)" if r[key] is None else f"{100 * r[key]:.0f}% of {points:.1f} pts"


def table(results):
    rows = ["| data | noise | R | k | P@k | flagged (P / R) | OOF acc (given / true) | acc noisy | acc − flagged "
            "| acc relabelled (right / relabelled) | acc clean | gap recovered: − flagged | relabelled "
            "| − planted (removal's ceiling) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        a = r["accuracy"]
        flagged_p = "–" if r["flagged_precision"] is None else f"{r['flagged_precision']:.2f}"
        true = "–" if r.get("oof_accuracy_true") is None else f"{r['oof_accuracy_true']:.3f}"
        relabelled = "–" if "relabelled" not in a else \
            f"{a['relabelled']:.3f} ({r['relabelled_right']} / {r['relabelled']})"
        rows.append(f"| {r['dataset']} | {100 * r['noise']:.0f}% | {r.get('repeats', 1)} | {r['k']} | "
                    f"{r['precision_at_k']:.2f} | {r['flagged']} ({flagged_p} / {r['flagged_recall']:.2f}) | "
                    f"{r['oof_accuracy']:.3f} / {true} | {a['noisy']:.3f} | {a['minus_flagged']:.3f} | {relabelled} | "
                    f"{a['clean']:.3f} | {recovered(r, 'gap_recovered')} | "
                    f"{recovered(r, 'gap_recovered_relabelled')} | {recovered(r, 'gap_recovered_minus_planted')} |")
    return "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=os.path.join(ROOT, "benchmarks", "work", "label_audit"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--tnews_steps", type=int, default=100)
    parser.add_argument("--skip_tnews", action="store_true")
    parser.add_argument("--skip_keyword", action="store_true", help="only the tnews rows")
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results_label_audit.json"),
                        help="the results JSON (its rows of data and noise this run does not cover are kept)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep finished audits and training runs in --work (continue an interrupted run)")
    parser.add_argument("--tnews_model", help="the tnews rows' model (default: the tiny random ERNIE on the 40k "
                                              "vocab); e.g. the proxy: rows named tnews-proxy, section 1's flags")
    parser.add_argument("--keyword_per_class", default="32,64",
                        help="training texts per label of the keyword task, one audit pair per size (32: 96 texts)")
    parser.add_argument("--test_per_class", type=int, default=100,
                        help="test texts per label of the keyword task (fixed and seeded: train.txt and dev.txt do "
                             "not depend on it; one test.txt per size for the noisy, minus-flagged and clean runs)")
    parser.add_argument("--train_seeds", default="42,43,44",
                        help="seeds of the noisy / minus-flagged / clean training runs (accuracies are their mean; "
                             "the audit itself uses the flags' --seed 42)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="audit.py --repeats: fold splits and seeds whose out-of-fold probabilities are averaged")
    parser.add_argument("--audit_rounds", type=int, default=1,
                        help="audit.py --audit_rounds: round n trains its folds without round n-1's suspects")
    parser.add_argument("--relabel_threshold", type=float, default=0.5,
                        help="the 'relabelled' remedy: a flagged line takes its suggested label when that label's "
                             "out-of-fold probability is at least this; the other flagged lines are removed")
    parser.add_argument("--noise", default=",".join(str(f) for f in NOISE),
                        help="shares of train.txt's labels to flip, one audit per share and data set")
    args = parser.parse_args()
    global REUSE
    REUSE = args.reuse
    os.environ.setdefault("PTUNING_OFFLINE", "1")
    from utils.model import compat
    from utils.testing.synthetic import PROMPT, write_keyword_dataset

    compat.apply()
    noise = [float(f) for f in args.noise.split(",")]
    results_path = args.results
    os.makedirs(args.work, exist_ok=True)
    keyword_model, tnews_model = tiny_models(args.work)
    flags = ["--prompt", PROMPT, "--max_steps", str(args.steps), "--eval_steps", "20", "--logging_steps", "20", *FAST]
    cases = []
    for per_class in ([] if args.skip_keyword else (int(n) for n in args.keyword_per_class.split(","))):
        name = "keyword" if per_class == 32 else f"keyword{3 * per_class}"
        keyword = write_keyword_dataset(os.path.join(args.work, name), train_per_class=per_class,
                                        test_per_class=args.test_per_class)
        cases += [(name, keyword_model, keyword, f, flags) for f in noise]
    tnews_name, tnews_fast = "tnews", FAST
    if args.tnews_model:
        tnews_model, tnews_name = args.tnews_model, "tnews-proxy"
        tnews_fast = ["--max_seq_length", "64", "--learning_rate", "1e-4", "--ppt_learning_rate", "1e-3",
                      "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64", "--seed", "42"]
    if os.path.isdir(TNEWS) and os.path.isdir(tnews_model) and not args.skip_tnews:
        tnews_flags = ["--prompt", "这条新闻标题的主题是", "--max_steps", str(args.tnews_steps), "--eval_steps",
                       str(max(1, args.tnews_steps // 4)), "--logging_steps", "20", *tnews_fast]
        cases += [(tnews_name, tnews_model, TNEWS, f, tnews_flags) for f in noise]
    else:
        print(f"tnews skipped ({TNEWS} or {VOCAB} not present, or --skip_tnews)", file=sys.stderr)
    covered = {(name, fraction) for name, _, _, fraction, _ in cases}
    kept = []
    if os.path.isfile(results_path):
        with open(results_path, encoding="utf-8") as fp:
            kept = [r for r in json.load(fp)["results"] if (r["dataset"], r["noise"]) not in covered]
        for r in kept:
            r.setdefault("note", "not rerun: from an earlier run")
    results = []
    for name, model, source, fraction, case_flags in cases:   # written after each case
        results.append(one_case(name, model, source, fraction, args.work, case_flags, args.folds,
                                [int(seed) for seed in args.train_seeds.split(",")], args.repeats,
                                args.relabel_threshold, args.audit_rounds))
        with open(results_path, "w", encoding="utf-8") as fp:
            json.dump({"folds": args.folds, "steps": args.steps, "tnews_steps": args.tnews_steps,
                       "keyword_per_class": args.keyword_per_class, "test_per_class": args.test_per_class,
                       "train_seeds": args.train_seeds, "repeats": args.repeats, "audit_rounds": args.audit_rounds,
                       "relabel_threshold": args.relabel_threshold,
                       "results": results + kept}, fp, ensure_ascii=False, indent=1)
        print(table(results + kept), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
