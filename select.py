"""What to label next: rank a file of unlabelled texts with an export (or an ensemble export) and pick K.

    python select.py --model_path_prefix checkpoints/export --input_file unlabeled.txt --k 100 \
        --strategy entropy --output_file to_label.tsv
    python select.py --model_path_prefix ens/export --input_file unlabeled.txt --k 100 --strategy disagreement \
        --output_file to_label.tsv --exclude_file data/train.txt --balance

Strategies: entropy and margin (uncertainty), disagreement (an ensemble's members), diversity
(k-center greedy, or --diversity kmeans, on the export's mask_embedding), hybrid (the --pool_size
most uncertain, then k-center or k-means among them). Writes the TSV (rank, line, text, score,
prediction), STEM.label-studio.json (Label Studio tasks with the model's pre-labels) and
STEM.label-studio.xml (the labelling config).
Streams any number of texts with flat memory; --ray scores on a Ray cluster as infer.py does.
Needs no Paddle. docs/how-to/active-learning.md explains the choices; utils/selection/ is the code.
"""
# This file shares its name with the standard library's `select` module, and a script's directory
# comes first on sys.path: imported as `select` (by subprocess, asyncio, ...), it puts the real
# module in its place. Import this script by path under another name (tests/test_select.py).
if __name__ == "select":
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _here = _os.path.dirname(_os.path.abspath(__file__))
    _spec = _machinery.PathFinder.find_spec("select", [p for p in _sys.path
                                                       if _os.path.abspath(p or _os.curdir) != _here])
    _real = _util.module_from_spec(_spec)
    _spec.loader.exec_module(_real)
    _sys.modules["select"] = _real
    globals().update({k: v for k, v in vars(_real).items() if not k.startswith("__")})
else:
    import json
    import signal
    import sys

    from utils.errors import run_cli


def terminate(signum, frame):
    raise SystemExit(128 + signum)


def main(argv):
    from utils.flags.parser import parse_flags
    from utils.flags.select import SelectArguments

    (args,) = parse_flags(SelectArguments, argv, "select.py", __doc__)
    from utils.selection.run import SelectOptions, select_file

    device, device_id = args.placement()
    options = SelectOptions(k=args.k, strategy=args.strategy.value, disagreement=args.disagreement.value,
                            pool_size=args.pool_size, balance=args.balance, seed=args.seed,
                            diversity=args.diversity.value)
    runtime = dict(device=device, num_threads=args.num_threads, use_fp16=args.use_fp16, use_int8=args.use_int8,
                   max_seq_length=args.max_seq_length, batch_size=args.batch_size)
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        summary = select_file(args.model_path_prefix, args.input_file, args.output_file, options,
                              exclude_path=args.exclude_file, runtime=runtime, ray=args.ray,
                              chunk_size=args.chunk_size, sort_by_length=not args.file_order, device_id=device_id)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
