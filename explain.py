"""Explain predictions: token attributions (integrated gradients through the soft prompt) as HTML and JSON.

    python explain.py --resume_from_checkpoint ./checkpoints --text "这句话里有苹果" --output_dir ./explanations
    python explain.py --resume_from_checkpoint ./checkpoints --input_file texts.txt
    python explain.py --resume_from_checkpoint ./checkpoints --data_dir ./data --bad_cases dev   # errors, most confident first

Writes explanations.html / explanations.json (or bad_cases_<split>.html / .json) in --output_dir:
each text's tokens shaded by how much they pushed the model towards the explained label (the
predicted one unless --label), and every number (utils/reporting/explain.py). Pair models: text_a<TAB>text_b.
"""
import sys

from utils.errors import UserError, run_cli


def read_texts(args, pair: bool):
    from utils.files import iter_text_lines

    texts = [(t, "--text", None) for t in args.text]
    if args.input_file:
        for number, line in iter_text_lines(args.input_file, "input file"):
            if line.strip():
                texts.append((line.rstrip("\n"), args.input_file, number))
            if len(texts) >= args.max_cases + len(args.text):
                break
    examples = []
    for text, where, number in texts:
        cells = [c.strip() for c in text.split("\t")]
        if pair:
            if len(cells) < 2 or not cells[0] or not cells[1]:
                raise UserError("this model classifies text pairs: give text_a<TAB>text_b", where, number)
            examples.append({"text_a": cells[0], "text_b": cells[1]})
        else:
            if not cells[0]:
                raise UserError("empty text", where, number)
            examples.append({"text_a": cells[0]})
    return examples


def main(argv):
    from utils.flags.explain import ExplainArguments
    from utils.flags.parser import parse_flags

    (args,) = parse_flags(ExplainArguments, argv, "explain.py", __doc__)
    from utils.model.spec import ModelSpec

    spec = ModelSpec.load(args.resume_from_checkpoint)
    pair = sum(1 for part in spec.template if "text" in part) > 1
    if args.label is not None and args.label not in spec.labels:
        raise UserError(f"{args.label!r} is not one of the model's labels ({', '.join(spec.labels)})", "--label")
    dataset = None
    if args.bad_cases:
        if spec.decoder.multi_label:
            raise UserError(f"ranks texts whose one predicted label is wrong; a {spec.task_type} model predicts label "
                            "sets: explain its texts with --text or --input_file", "--bad_cases")
        from utils.dataset.folder import load_dataset_dir

        dataset = load_dataset_dir(args.data_dir, need_train=False, need_dev=args.bad_cases == "dev",
                                   task_type=spec.task_type)
        if args.bad_cases == "test" and not dataset.test:
            raise UserError("has no test.txt", args.data_dir)
        if dataset.labels.labels != spec.labels:
            raise UserError(f"label.txt's labels {dataset.labels.labels} are not the model's {spec.labels}",
                            dataset.labels.path)
    examples = read_texts(args, pair)
    if not examples and dataset is None:
        raise UserError("has no texts to explain", args.input_file)

    import paddle

    from utils.model import compat
    from utils.reporting.explain import Explainer, bad_cases, write_explanations
    from utils.model.assembly import rebuild_from_checkpoint

    compat.apply()
    paddle.set_device(args.paddle_device)
    model, tokenizer, spec = rebuild_from_checkpoint(args.resume_from_checkpoint)
    from utils.training.long_text import TrainingWindows

    # --long_text: a long document is read as the model reads it, its windows aggregated
    explainer = Explainer(model, tokenizer, spec, steps=args.steps, windows=TrainingWindows.of(spec, tokenizer))
    written = []
    if examples:
        explanations = [explainer.explain(e, label=args.label) for e in examples]
        written.append(write_explanations(args.output_dir, "explanations", explanations, "Token attributions"))
    if dataset is not None:
        split = dataset.dev if args.bad_cases == "dev" else dataset.test
        gold = dataset.gold_names(split)
        cases = bad_cases(explainer, split, gold, explainer.probabilities(split), limit=args.max_cases)
        written.append(write_explanations(args.output_dir, f"bad_cases_{args.bad_cases}", cases,
                                          f"Bad cases on {args.bad_cases}.txt: errors, most confident first "
                                          f"({len(cases)})"))
    for paths in written:
        print(f"wrote {paths['html']} and {paths['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
