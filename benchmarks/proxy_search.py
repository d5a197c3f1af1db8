"""Issue 27 on the knowledge-bearing proxy (QUALITY.md section 1): search.py's configuration against the
README's default, over FewCLUE tnews' five few-shot splits, with the search's cost in CPU-hours.

    nice -n 19 python benchmarks/proxy_quality.py --build_only         # the proxy, once (~1 h)
    nice -n 19 python benchmarks/proxy_search.py [--n_trials 10] [--search_splits 0 1] [--jobs 2]
    python benchmarks/proxy_search.py                                   # again: the table from the cache

Steps (each cached under --work_dir; rerun the same command after an interruption):

1. search: `search.py --splits_dir tnews/splits --split_ids <--search_splits> --n_trials N -- <section 1's
   train.py flags without the learning rates, without --do_predict>` with search.py's default space (learning
   rates, soft encoder, --freeze_plm, label words: label.txt's and the checker's first 2 ranked sets), its
   objective dev accuracy mean - std over those splits, MedianPruner on. The study resumes after a kill. The
   search's CPU time is measured, not estimated: user + sys of search.py and every train.py it waited for
   (resource.getrusage(RUSAGE_CHILDREN)), added up over invocations in search_cpu.json;
2. evaluation: each configuration over splits 0-4 (`multirun.py --splits_dir ... --split_ids i`, one folder
   per split: a finished split is never rerun), --jobs processes at a time:
   * `readme`: the README's default learning rates (--learning_rate 3e-5 --ppt_learning_rate 3e-4; lstm soft
     encoder, no --freeze_plm, label.txt's words) at section 1's budget (200 steps of 16, --max_seq_length 64);
   * `best`: the search's best trial's flags (its label words in a task folder of links to the shared
     splits and test/data files, with its own label.txt: multirun copies the task folder's label.txt);
   * `section1` (only with --configs ... section1): section 1's P-tuning row again (1e-4 / 1e-3);
3. the Markdown table (test accuracy and macro-F1 mean ± sample std over the splits, dev accuracy too) and
   benchmarks/results_proxy_search.json.
"""
import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import proxy_quality as pq  # noqa: E402  (the proxy's paths and section 1's flags)

sys.path.insert(0, pq.ROOT)
SPLITS = os.path.join(pq.TNEWS, "splits")
SEARCHED = ("--learning_rate", "--ppt_learning_rate")


def base_flags(proxy, steps=200):
    """Section 1's train.py flags on the proxy, without the searched learning rates and --do_predict."""
    flags, out = pq.train_flags(steps, max(1, steps // 4)), []
    skip = False
    for flag in flags:
        if skip:
            skip = False
            continue
        if flag in SEARCHED:
            skip = True
            continue
        if flag != "--do_predict":
            out.append(flag)
    return ["--model_name_or_path", proxy, *out]


def child_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def search(work, proxy, args):
    out = os.path.join(work, "search")
    command = [pq.PY, "search.py", "--output_dir", out, "--n_trials", str(args.n_trials), "--splits_dir", SPLITS,
               "--split_ids", *map(str, args.search_splits), "--", *base_flags(proxy, args.steps)]
    cpu_log = os.path.join(work, "search_cpu.json")
    log = json.load(open(cpu_log, encoding="utf-8")) if os.path.isfile(cpu_log) else {"invocations": []}
    record = os.path.join(out, "search.json")
    finished = os.path.isfile(record) and sum(
        json.load(open(record, encoding="utf-8"))["trials"][s] for s in ("COMPLETE", "PRUNED")) >= args.n_trials
    if not finished:
        start, cpu = time.time(), child_cpu_seconds()
        sys.stderr.write(f"$ {shlex.join(command)}\n  ({args.search_workers} at once, sharing the study)\n")
        env = dict(os.environ, PTUNING_OFFLINE="1")
        os.makedirs(os.path.join(work, "logs"), exist_ok=True)
        workers = []
        for worker in range(args.search_workers):
            with open(os.path.join(work, "logs", f"search-{worker}.log"), "a", encoding="utf-8") as fp:
                workers.append(subprocess.Popen(command, cwd=pq.ROOT, env=env, stdout=fp, stderr=subprocess.STDOUT))
            if worker == 0 and args.search_workers > 1:
                time.sleep(60)  # the first creates the study (a benchmark's pacing, not a test's synchronisation)
        code = max(worker.wait() for worker in workers)
        log["invocations"].append({"wall_seconds": round(time.time() - start, 1),
                                   "cpu_seconds": round(child_cpu_seconds() - cpu, 1), "exit": code,
                                   "ended": time.strftime("%Y-%m-%d %H:%M:%S")})
        with open(cpu_log, "w", encoding="utf-8") as fp:
            json.dump(log, fp, indent=1)
        if code != 0:
            raise SystemExit(f"search.py failed ({code})")
    with open(record, encoding="utf-8") as fp:
        return out, json.load(fp), log, command


def best_flags(search_dir):
    """The best trial's train.py flags and label words (None: label.txt's own) from the study."""
    import optuna

    from utils.search.report import best_trial
    from utils.search.space import LABEL_WORDS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{os.path.join(search_dir, 'study.db')}")
    best = best_trial(study)
    words = json.loads(best.params[LABEL_WORDS]) if LABEL_WORDS in best.params else None
    return list(best.user_attrs["train_flags"]), words, best.number


def task_with_words(work, words):
    """A task folder whose splits/, test.txt and data.txt are links to the shared ones, with its own label.txt."""
    from utils.dataset.labels import read_label_file
    from utils.search.candidates import write_label_file

    own = read_label_file(os.path.join(pq.TNEWS, "label.txt"))
    if words is None or all(own.label_words.get(label) == word for label, word in words.items()):
        return SPLITS
    task = os.path.join(work, "task-best-words")
    os.makedirs(task, exist_ok=True)
    for name in ("splits", "test.txt", "data.txt"):
        if not os.path.lexists(os.path.join(task, name)):
            os.symlink(os.path.join(pq.TNEWS, name), os.path.join(task, name))
    write_label_file(task, words)
    return os.path.join(task, "splits")


def evaluate(work, configs, jobs_at_once):
    """Each configuration over splits 0-4, one multirun.py per split (cached); {config: [per-split metrics]}."""
    jobs = {}
    for name, (flags, splits_dir) in configs.items():
        for split in range(5):
            out = os.path.join(work, "eval", name, f"split{split}")
            if os.path.isfile(os.path.join(out, "summary.json")):
                continue
            extra = [f for f in ("--do_eval", "--do_predict") if f not in flags]
            command = [pq.PY, "multirun.py", "--output_dir", out, "--splits_dir", splits_dir, "--split_ids",
                       str(split), "--overwrite_output_dir", "--", *flags, *extra]
            jobs[f"{name}{split}"] = (command, os.path.join(work, "logs", f"eval-{name}-{split}.log"))
    seconds = pq.run_all(jobs, jobs_at_once)
    results = {}
    for name in configs:
        per_split = []
        for split in range(5):
            path = os.path.join(work, "eval", name, f"split{split}", "runs", f"split{split}_seed42")
            metrics = {}
            for kind in ("eval", "test"):
                with open(os.path.join(path, f"{kind}_results.json"), encoding="utf-8") as fp:
                    metrics.update(json.load(fp))
            per_split.append(metrics)
        results[name] = per_split
    return results, seconds


def table(results, labels):
    lines = ["| configuration | test accuracy (%) | test macro-F1 (%) | dev accuracy (%) | splits |",
             "|---|---|---|---|---|"]
    for name, per_split in results.items():
        cells = []
        for key in ("test_accuracy", "test_macro_f1", "eval_accuracy"):
            s = pq.stats([m[key] for m in per_split])
            cells.append(f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}")
        lines.append(f"| {labels[name]} | {' | '.join(cells)} | {len(per_split)} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default=os.path.join(pq.ROOT, "benchmarks", "work", "proxy", "full"),
                        help="proxy_quality.py's full work folder (the proxy in WORK_DIR/proxy); the search and "
                             "its evaluation go into WORK_DIR/search27")
    parser.add_argument("--n_trials", type=int, default=10)
    parser.add_argument("--search_splits", type=int, nargs="+", default=[0, 1],
                        help="the splits of the search's objective (dev accuracy mean - std over them)")
    parser.add_argument("--configs", nargs="+", default=["readme", "best"],
                        choices=["readme", "best", "section1"])
    parser.add_argument("--jobs", type=int, default=2, help="evaluation runs at once")
    parser.add_argument("--search_workers", type=int, default=2,
                        help="search.py processes sharing the study (sqlite), as docs/how-to/search.md allows")
    parser.add_argument("--search_only", action="store_true")
    parser.add_argument("--model", help="another model than WORK_DIR/proxy (a smoke check of this script: results "
                                        "into WORK_DIR/search27/results_smoke.json, not benchmarks/)")
    parser.add_argument("--steps", type=int, default=200, help="train.py --max_steps (section 1: 200)")
    args = parser.parse_args()
    proxy = args.model or os.path.join(args.work_dir, "proxy")
    if not args.model and not os.path.isfile(os.path.join(proxy, "checkpoint_complete.json")):
        raise SystemExit(f"no proxy at {proxy}: run benchmarks/proxy_quality.py --build_only first")
    work = os.path.join(args.work_dir, "search27")
    os.makedirs(work, exist_ok=True)
    base = base_flags(proxy, args.steps)
    configs = {"readme": (base + ["--learning_rate", "3e-5", "--ppt_learning_rate", "3e-4"], SPLITS),
               "section1": (base + ["--learning_rate", "1e-4", "--ppt_learning_rate", "1e-3"], SPLITS)}
    record, cpu_log, command, number = None, {"invocations": []}, [], None
    if "best" in args.configs or args.search_only:   # --configs readme: evaluated beside a running search
        search_dir, record, cpu_log, command = search(work, proxy, args)
        if args.search_only:
            print(json.dumps(record, indent=1, ensure_ascii=False))
            return 0
        flags, words, number = best_flags(search_dir)
        configs["best"] = (flags, task_with_words(work, words))
    configs = {name: configs[name] for name in args.configs}
    results, seconds = evaluate(work, configs, args.jobs)
    cpu = sum(i["cpu_seconds"] for i in cpu_log["invocations"])
    if record is None:
        print(table(results, {name: name for name in results}))
        return 0
    params = {k: v for k, v in record["params"].items() if k != "label_words"}
    words = "label.txt's words" if configs["best"][1] == SPLITS else "ranked label words (in the JSON)"
    labels = {"readme": "README default (lr 3e-5, ppt 3e-4, lstm, label.txt's words)",
              "best": f"search's best (trial {number}: {params}, {words})",
              "section1": "section 1's P-tuning (lr 1e-4, ppt 1e-3)"}
    result = {"date": time.strftime("%Y-%m-%d"), "proxy": proxy, "search_command": shlex.join(command),
              "search": record, "search_cpu": cpu_log, "search_cpu_hours": round(cpu / 3600, 3),
              "search_train_wall_hours": round(record["train_seconds"] / 3600, 3),
              "configs": {name: {"flags": configs[name][0], "splits_dir": configs[name][1], "per_split": results[name],
                                 **{key: pq.stats([m[key] for m in results[name]])
                                    for key in ("test_accuracy", "test_macro_f1", "eval_accuracy")}}
                          for name in configs},
              "eval_seconds": seconds}
    path = os.path.join(work, "results_smoke.json") if args.model else \
        os.path.join(pq.ROOT, "benchmarks", "results_proxy_search.json")
    with open(path, "w", encoding="utf-8") as fp:
        json.dump(result, fp, indent=1, ensure_ascii=False)
    print(table(results, labels))
    print(f"\nsearch: {record['trials']}, CPU {cpu / 3600:.2f} h (user+sys), trials' wall "
          f"{record['train_seconds'] / 3600:.2f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
