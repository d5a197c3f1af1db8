"""Active-learning simulation on the keyword tasks: select.py's strategies against random picks.

    python benchmarks/active_learning.py                       # the uniform task, the stated small config
    python benchmarks/active_learning.py --task longtail --strategies random entropy margin diversity hybrid
    python benchmarks/active_learning.py --seeds 0 1 --rounds 3 --strategies random entropy+balance diversity+kmeans
    python benchmarks/active_learning.py --task longtail --strategies random disagreement --tag committee
        # query by committee (three seeds a round, ensemble.py), fixed before it ran: QUALITY.md section 4.2
    python benchmarks/active_learning.py --task longtail --per_round 8 --rounds 10 --strategies random margin --tag rounds8
        # the same 96 labels in rounds of 8 (select.py --k 8), fixed before it ran: QUALITY.md section 4.2
    python benchmarks/active_learning.py --task longtail --rounds 9 --strategies random margin --tag budget160
        # the same rounds of 16 on to 160 labels (9 rounds; rounds 1-5 reproduce the 96-label runs), fixed before
        # it ran: the target read against random's final at 160 labels (margin must reach it by 112); QUALITY.md 4.2
    nice -n 19 python benchmarks/active_learning.py --task tnews --model benchmarks/work/proxy/full/proxy \
        --strategies random entropy --seeds 0 1        # FewCLUE tnews on QUALITY.md section 1's proxy

Tasks: `uniform`, one keyword per class (3 classes, utils/testing/synthetic.py make_split); `longtail`, 4
classes of 6 keywords each, Zipf-distributed in the pool (a few frequent, many rare; synthetic.py
make_longtail_split), dev and test uniform over the keywords, so a model must see the rare ones labelled;
`tnews`: FewCLUE tnews (15 labels) with --model (section 1's proxy: `benchmarks/proxy_quality.py
--build_only`) and section 1's training flags; tnews' unlabeled.txt has no labels, so the pool is the
labelled texts of the five few-shot splits (train_0-4 and dev_1-4, deduplicated) with their labels hidden
from the strategies, dev is dev_0 and test is test.txt (2010 texts).
The oracle is the gold label. Per seed and strategy: start from --start labelled texts per class
(drawn at random with the seed; round 0 is trained once per seed and shared by every strategy), then
--rounds rounds of: train.py on the labelled texts (the tiny random ERNIE of utils/testing, --steps
steps; the fixed dev set is not counted as labels and is the same for all), export, accuracy on a
fixed test set, then select.py picks --per_round more texts from the unlabelled pool (--exclude_file =
the labels so far), whose gold labels are added. `random` draws them uniformly with the seed;
`NAME+balance` adds select.py --balance, `NAME+kmeans` --diversity kmeans; `disagreement` trains two more
models a round (COMMITTEE seeds) and ranks by the ensemble's disagreement, the curve being the round's own model's. Each curve is cached in the
work folder (per configuration), so strategies can run in parallel processes and be gathered by one
last run. Writes benchmarks/results_active_learning[_TASK].json and benchmarks/active_learning[_TASK].png
(mean ± std over seeds) and prints the table that QUALITY.md carries.
"""
import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("PTUNING_OFFLINE", "1")
WORK = os.path.join(ROOT, "benchmarks", "work", "active_learning")
STEPS_LONGTAIL = 400  # calibrated on a held-out set (not the test set): all 400 pool labels -> 100%
FAST = ["--max_seq_length", "40", "--learning_rate", "1e-3", "--ppt_learning_rate", "3e-3",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "64"]
SHARED = os.environ.get("PTUNING_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
TNEWS = os.path.join(SHARED, "data", "fewclue", "tnews")
TNEWS_PROMPT = "这条新闻标题的主题是"
PROXY_FLAGS = ["--max_seq_length", "64", "--learning_rate", "1e-4", "--ppt_learning_rate", "1e-3",  # section 1's
               "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64"]


def build_tiny(work: str, task: str = "uniform") -> str:
    """The tiny random ERNIE; for the long-tail task its vocab also holds that task's keyword characters
    (a separate model, so the uniform task's runs keep their model)."""
    from utils.testing import synthetic
    from utils.testing.tiny_ernie import build_ernie, texts_of_data_dirs, vocab_from_texts

    path = os.path.join(work, "tiny-ernie" if task == "uniform" else f"tiny-ernie-{task}")
    if not os.path.isdir(path):
        texts = synthetic.vocab_texts() + texts_of_data_dirs([os.path.join(ROOT, "data", "example")])
        if task == "longtail":
            texts += synthetic.longtail_vocab_texts()
        build_ernie(path, vocab_from_texts(texts + [synthetic.PROMPT]), seed=0)
    return path


def task_splits(task: str, pool_per_class: int):
    """`(pool, dev, test)` as `(text, label)` lists, each from its own fixed seed (the same for every run).
    uniform: one keyword per class, everything balanced. longtail: six keywords per class, Zipf-distributed in
    the pool (utils/testing/synthetic.py `longtail_counts`), dev (1 per keyword) and test (8 per keyword) uniform."""
    from utils.testing.synthetic import make_longtail_split, make_split

    if task == "tnews":
        rows = lambda name: [tuple(line.rstrip("\n").rsplit("\t", 1))  # noqa: E731
                             for line in open(os.path.join(TNEWS, name), encoding="utf-8") if line.strip()]
        pool = {}
        for name in [f"splits/train_{i}.txt" for i in range(5)] + [f"splits/dev_{i}.txt" for i in range(1, 5)]:
            pool.update((text, label) for text, label in rows(name))
        dev = rows("splits/dev_0.txt")
        held = {text for text, _ in dev} | {text for text, _ in rows("test.txt")}
        return sorted((t, l) for t, l in pool.items() if t not in held), dev, rows("test.txt")
    if task == "longtail":
        return (make_longtail_split(random.Random(100), pool_per_class),
                make_longtail_split(random.Random(200), 6, uniform=True),
                make_longtail_split(random.Random(300), 48, uniform=True))
    split = lambda seed, n: [tuple(line.split("\t")) for line in make_split(random.Random(seed), n)]  # noqa: E731
    return split(100, pool_per_class), split(200, 8), split(300, 50)


def train_export(tiny: str, data_dir: str, out: str, steps: int, seed: int, task: str = "uniform",
                 export: bool = True) -> str:
    import train
    from utils.errors import run_cli
    from utils.model import compat
    from utils.testing.synthetic import PROMPT

    compat.apply()
    shutil.rmtree(out, ignore_errors=True)
    argv = ["--model_name_or_path", tiny, "--data_dir", data_dir, "--output_dir", out,
            "--prompt", TNEWS_PROMPT if task == "tnews" else PROMPT,
            "--do_train", *(["--do_export"] if export else []), "--max_steps", str(steps), "--logging_steps", str(steps),
            "--save_strategy", "no", "--seed", str(seed), *(PROXY_FLAGS if task == "tnews" else FAST)]
    assert run_cli(train.main, argv) == 0
    return os.path.join(out, "export")


def write_split(path: str, rows) -> None:
    with open(path, "w", encoding="utf-8") as fp:
        fp.write("".join(f"{text}\t{label}\n" for text, label in rows))


def accuracy(export: str, test) -> float:
    from utils.deploy.classifier import Classifier

    predictions = Classifier(export, device="cpu").predict([t for t, _ in test])
    return sum(p.label == gold for p, (_, gold) in zip(predictions, test)) / len(test)


def select(export: str, pool_path: str, labelled_path: str, k: int, strategy: str, out: str, seed: int,
           option: str = ""):
    """select.py in-process: the input line numbers it picked."""
    import importlib.util

    from utils.errors import run_cli

    spec = importlib.util.spec_from_file_location("select_script", os.path.join(ROOT, "select.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--model_path_prefix", export, "--input_file", pool_path, "--k", str(k), "--strategy", strategy,
            "--exclude_file", labelled_path, "--output_file", out, "--device", "cpu", "--pool_size", "200",
            "--seed", str(seed)] + (["--balance"] if option == "balance" else [])
    if option and option != "balance":  # diversity+kmeans: select.py --strategy diversity --diversity kmeans
        argv += ["--diversity", option]
    assert run_cli(module.main, argv) == 0
    with open(out, encoding="utf-8") as fp:
        return [int(line.split("\t")[1]) for line in fp.read().splitlines()[1:]]


# disagreement: the committee's training seeds, as offsets from the run's own seed (the round's model is the
# first member); fixed before its first run (QUALITY.md section 4.2)
COMMITTEE = (0, 100, 200)


def committee_export(args, tiny: str, data_dir: str, base: str, seed: int, model_dir: str) -> str:
    """--strategy disagreement: the round's model (`model_dir`) and models of the other COMMITTEE seeds trained
    on the same labels, as one ensemble export (ensemble.py), whose members' disagreement select.py ranks by.
    The curve's accuracy stays the round's own model's, as for every other strategy."""
    import ensemble
    from utils.errors import run_cli

    members = [model_dir]
    for offset in COMMITTEE[1:]:
        members.append(os.path.join(base, f"committee-{offset}"))
        train_export(tiny, data_dir, members[-1], args.steps, seed + offset, args.task, export=False)
    out = os.path.join(base, "committee")
    assert run_cli(ensemble.main, ["--members", *members, "--output_dir", out, "--overwrite_output_dir"]) == 0
    return os.path.join(out, "export")


def start(args, tiny: str, seed: int, pool, dev, test, data_dir: str) -> tuple:
    """Round 0, the same for every strategy (the labels drawn with the seed, the same training seed): trained
    once per seed and shared. `(labelled indices, rng after the draw, export, accuracy)`."""
    rng = random.Random(seed)
    by_class = {}
    for index, (_, label) in enumerate(pool):
        by_class.setdefault(label, []).append(index)
    labelled = sorted(i for label in sorted(by_class) for i in rng.sample(by_class[label], args.start))
    write_split(os.path.join(data_dir, "dev.txt"), dev)
    if args.task == "tnews":  # its label words (the soft verbalizer starts from them)
        shutil.copyfile(os.path.join(TNEWS, "label.txt"), os.path.join(data_dir, "label.txt"))
    else:
        with open(os.path.join(data_dir, "label.txt"), "w", encoding="utf-8") as fp:
            fp.write("".join(label + "\n" for label in sorted(by_class)))
    write_split(os.path.join(data_dir, "train.txt"), [pool[i] for i in labelled])
    cached = os.path.join(args.work, f"start-seed{seed}.json")  # shared by processes running other strategies
    if not os.path.exists(cached):
        export = train_export(tiny, data_dir, os.path.join(args.work, f"start-seed{seed}-{os.getpid()}"), args.steps,
                              seed, args.task)
        write_json(cached, {"export": export, "accuracy": accuracy(export, test)})
    with open(cached) as fp:
        start = json.load(fp)
    return labelled, rng, start["export"], start["accuracy"]


def write_json(path: str, value) -> None:
    with open(path + ".tmp", "w") as fp:
        json.dump(value, fp, indent=1)
    os.replace(path + ".tmp", path)


def curve_of(args, tiny: str, seed: int, strategy: str, pool, dev, test, cached_only: bool = False) -> list:
    """One strategy's learning curve for one seed, kept in the work folder: a rerun (or another process's
    run of other strategies) reuses it, so strategies can run in parallel and be gathered in one table."""
    path = os.path.join(args.work, f"curve-{strategy}-seed{seed}.json")
    if (args.gather or cached_only) and not os.path.exists(path):
        return None
    if not os.path.exists(path):
        write_json(path, simulate(args, tiny, seed, strategy, pool, dev, test))
    with open(path) as fp:
        return json.load(fp)


def simulate(args, tiny: str, seed: int, strategy: str, pool, dev, test) -> list:
    base = os.path.join(args.work, f"{strategy}-seed{seed}")
    data_dir = os.path.join(base, "data")
    os.makedirs(data_dir, exist_ok=True)
    pool_path = os.path.join(base, "pool.txt")
    with open(pool_path, "w", encoding="utf-8") as fp:
        fp.write("".join(text + "\n" for text, _ in pool))
    labelled, rng, export, acc = start(args, tiny, seed, pool, dev, test, data_dir)
    curve = []
    for round_ in range(args.rounds + 1):
        if round_:
            write_split(os.path.join(data_dir, "train.txt"), [pool[i] for i in labelled])
            export = train_export(tiny, data_dir, os.path.join(base, "run"), args.steps, seed, args.task)
            acc = accuracy(export, test)
        curve.append({"labels": len(labelled), "accuracy": acc})
        print(json.dumps({"strategy": strategy, "seed": seed, **curve[-1]}), flush=True)
        if round_ == args.rounds:
            break
        if strategy == "random":
            rest = sorted(set(range(len(pool))) - set(labelled))
            picked = rng.sample(rest, args.per_round)
        else:
            name, _, option = strategy.partition("+")  # e.g. entropy+balance
            if name == "disagreement":
                export = committee_export(args, tiny, data_dir, base, seed, os.path.dirname(export))
            lines = select(export, pool_path, os.path.join(data_dir, "train.txt"), args.per_round, name,
                           os.path.join(base, "picks.tsv"), seed, option)
            picked = [n - 1 for n in lines]  # the pool file has no blank lines: line n is pool[n - 1]
        labelled = sorted(set(labelled) | set(picked))
    return curve


def summarise(results: dict, strategies) -> dict:
    table = {}
    for strategy in strategies:
        runs = results[strategy]
        points = []
        for i in range(len(runs[0])):
            accs = [run[i]["accuracy"] for run in runs]
            points.append({"labels": runs[0][i]["labels"], "mean": statistics.mean(accs),
                           "std": statistics.pstdev(accs), "seeds": len(accs)})
        table[strategy] = points
    target = table["random"][-1]
    for strategy in strategies:
        reached = next((p["labels"] for p in table[strategy] if p["mean"] >= target["mean"]), None)
        table[strategy + ":labels_to_random_final"] = {
            "labels": reached, "fraction_of_random": None if reached is None else round(reached / target["labels"], 3)}
    return table


def plot(table: dict, strategies, path: str, task: str = "uniform") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy in strategies:
        xs = [p["labels"] for p in table[strategy]]
        means = [p["mean"] for p in table[strategy]]
        stds = [p["std"] for p in table[strategy]]
        ax.plot(xs, means, marker="o", label=strategy)
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.15)
    ax.set_xlabel("labelled texts")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title("Active learning on FewCLUE tnews (the section 1 proxy)" if task == "tnews" else
                 f"Active learning on the {task} keyword task (tiny ERNIE)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(table: dict, strategies) -> str:
    labels = [p["labels"] for p in table["random"]]
    lines = ["| strategy | seeds | " + " | ".join(f"{n} labels" for n in labels) + " | labels to reach random's final |",
             "|---|---|" + "---|" * (len(labels) + 1)]
    for strategy in strategies:
        cells = [f"{p['mean']:.3f} ± {p['std']:.3f}" for p in table[strategy]]
        reach = table[strategy + ":labels_to_random_final"]
        got = "not reached" if reach["labels"] is None else f"{reach['labels']} ({reach['fraction_of_random']:.0%})"
        lines.append(f"| {strategy} | {table[strategy][0]['seeds']} | " + " | ".join(cells)
                     + f" | {got} |")
    return "\n".join(lines)


DEFAULTS = {  # per task: start (per class), per_round, rounds, steps, pool_per_class
    "uniform": dict(start=2, per_round=9, rounds=5, steps=80, pool_per_class=100),
    "longtail": dict(start=4, per_round=16, rounds=5, steps=STEPS_LONGTAIL, pool_per_class=100),
    # 2 per class (30), +30 a round; 200 steps of 16 as section 1 (pool_per_class unused: the splits' texts)
    "tnews": dict(start=2, per_round=30, rounds=4, steps=200, pool_per_class=0),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(DEFAULTS), default="uniform")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--strategies", nargs="+", default=["random", "entropy", "margin", "hybrid"],
                        help="random or select.py strategies; NAME+balance adds --balance, diversity+kmeans "
                             "--diversity kmeans")
    parser.add_argument("--start", type=int, help="labelled texts per class at the start")
    parser.add_argument("--per_round", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--steps", type=int, help="train.py --max_steps per round")
    parser.add_argument("--pool_per_class", type=int)
    parser.add_argument("--gather", action="store_true", help="no new runs: tabulate the curves already cached")
    parser.add_argument("--tag", default="", help="appended to the names of the JSON and PNG written")
    parser.add_argument("--model", help="--task tnews: the model (QUALITY.md section 1's proxy, "
                                        "benchmarks/work/proxy/full/proxy)")
    args = parser.parse_args()
    if args.task == "tnews" and not args.model:
        parser.error("--task tnews needs --model (the proxy: benchmarks/proxy_quality.py --build_only)")
    for name, value in DEFAULTS[args.task].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    suffix = ("" if args.task == "uniform" else f"_{args.task}") + (f"_{args.tag}" if args.tag else "")
    # Cached curves and starts belong to one configuration: its own work folder.
    args.work = os.path.join(WORK, args.task, "-".join(f"{n}{getattr(args, n)}" for n in DEFAULTS[args.task]))
    if args.task == "tnews":  # and one model: its path in the folder's name
        args.work += "-" + os.path.abspath(args.model).strip("/").replace("/", "_")
    os.makedirs(args.work, exist_ok=True)
    tiny = args.model if args.task == "tnews" else build_tiny(WORK, args.task)
    pool, dev, test = task_splits(args.task, args.pool_per_class)
    started = time.time()
    results = {s: [curve_of(args, tiny, seed, s, pool, dev, test) for seed in args.seeds] for s in args.strategies}
    if args.gather:  # only the finished curves; a strategy may then have fewer seeds (the table says how many)
        results = {s: [c for c in curves if c] for s, curves in results.items() if any(curves)}
        args.strategies = list(results)
    if "random" not in results:  # every table reads against random's curve: the ones another process cached
        randoms = [curve_of(args, tiny, seed, "random", pool, dev, test, cached_only=True) for seed in args.seeds]
        if not any(randoms):
            raise SystemExit("curves cached; no table: it reads against random's curve, which no run has cached for "
                             "these seeds (run --strategies random, then --gather)")
        results = {"random": [c for c in randoms if c], **results}
        args.strategies = ["random", *args.strategies]
    table = summarise(results, args.strategies)
    config = {k: v for k, v in vars(args).items() if k not in ("work", "gather", "tag")}
    if args.task == "tnews":
        config.update(pool=len(pool), dev=len(dev), test=len(test), flags=PROXY_FLAGS, prompt=TNEWS_PROMPT)
    out = {"config": config, "seconds": round(time.time() - started), "runs": results, "table": table}
    with open(os.path.join(ROOT, "benchmarks", f"results_active_learning{suffix}.json"), "w") as fp:
        json.dump(out, fp, indent=1)
    plot(table, args.strategies, os.path.join(ROOT, "benchmarks", f"active_learning{suffix}.png"), args.task)
    print(markdown(table, args.strategies))


if __name__ == "__main__":
    main()
