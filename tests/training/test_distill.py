"""Self-training / distillation: a teacher's soft labels on unlabeled texts teach a student that has
few gold labels; rounds; the student is a normal run; bad inputs before any model loads."""
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import read_json

import train
import utils.training.distill  # noqa: F401  (its Teacher is monkeypatched in test_bad_inputs)
from conftest import FAST
from utils.errors import run_cli
from utils.testing.synthetic import PROMPT


def lines(path):
    with open(path, encoding="utf-8") as fp:
        return [line.rstrip("\n") for line in fp if line.strip()]


def with_few_gold(data_dir, root):
    """A copy of `data_dir` under `root` keeping 10% of train.txt's gold lines; the other texts (labels
    cut) in root/unlabeled.txt. Returns `(data_dir, unlabeled_file, gold kept, unlabeled)`."""
    target = root / "data"
    target.mkdir()
    for name in ("label.txt", "dev.txt", "test.txt"):
        shutil.copy(os.path.join(data_dir, name), target / name)
    gold = lines(os.path.join(data_dir, "train.txt"))
    keep = len(gold) // 10
    (target / "train.txt").write_text("\n".join(gold[:keep]) + "\n", encoding="utf-8")
    unlabeled = root / "unlabeled.txt"
    unlabeled.write_text("\n".join(line.split("\t")[0] for line in gold[keep:]) + "\n", encoding="utf-8")
    return str(target), str(unlabeled), keep, len(gold) - keep


@pytest.fixture(scope="module")
def few_gold(trained, tmp_path_factory):
    """The keyword task with 10% of its gold labels (10 of 96 lines); the other 86 texts unlabeled."""
    return with_few_gold(trained[0], tmp_path_factory.mktemp("few-gold"))


def student_argv(model_dir, data_dir, out, *flags, steps=160):
    return ["--model_name_or_path", model_dir, "--data_dir", data_dir, "--output_dir", out, "--prompt", PROMPT,
            "--do_train", "--do_eval", "--max_steps", str(steps), "--eval_steps", str(steps // 4),
            "--logging_steps", "40", *FAST, *flags]


def test_student_with_10_percent_of_gold_and_teacher_soft_labels_learns_the_task(trained, few_gold, tiny_model_dir,
                                                                                  tmp_path):
    """10 gold labels + the teacher's soft labels on the 86 other texts: test accuracy >= 0.9 (the
    same student on the 10 gold labels alone stays near chance: BENCHMARKS.md, "Distillation")."""
    data_dir, unlabeled, n_gold, n_unlabeled = few_gold
    teacher = trained[1]
    out = str(tmp_path / "student")
    argv = student_argv(tiny_model_dir, data_dir, out, "--do_predict", "--do_export", "--teacher", teacher,
                        "--unlabeled_file", unlabeled)
    assert run_cli(train.main, argv) == 0
    assert read_json(os.path.join(out, "test_results.json"))["test_accuracy"] >= 0.9
    # a normal run that knows where its labels came from: spec, export manifest, distill.json
    distillation = read_json(os.path.join(out, "ptuning_config.json"))["distillation"]
    assert distillation["teacher"] == os.path.abspath(teacher) and distillation["teacher_kind"] == "checkpoint"
    assert distillation["used"] == n_unlabeled and distillation["teacher_labels"] == "soft"
    assert read_json(os.path.join(out, "export", "manifest.json"))["distillation"] == distillation
    assert len(lines(os.path.join(out, "teacher_predictions.tsv"))) == 1 + n_unlabeled
    rounds = read_json(os.path.join(out, "distill.json"))["rounds"]
    assert [r["round"] for r in rounds] == [1] and rounds[0]["metrics"]["eval_accuracy"] >= 0.9
    state = read_json(os.path.join(out, "trainer_state.json"))
    assert state["max_steps"] == 160


def test_self_training_rounds_and_resume_as_a_whole(few_gold, tiny_model_dir, tmp_path, caplog):
    """Without --teacher: round 0 learns the gold labels and labels the texts for round 1 (the run in
    OUTPUT_DIR); --resume_from_checkpoint OUTPUT_DIR reuses the finished round."""
    import logging

    data_dir, unlabeled, _, _ = few_gold
    out = tmp_path / "self"
    argv = student_argv(tiny_model_dir, data_dir, str(out), "--unlabeled_file", unlabeled, "--min_confidence",
                        "0.4", "--teacher_labels", "hard", steps=40)
    assert run_cli(train.main, argv) == 0
    round0 = out / "rounds" / "round-0"
    assert "distillation" not in read_json(round0 / "ptuning_config.json")  # gold only
    distillation = read_json(out / "ptuning_config.json")["distillation"]
    assert distillation["teacher"] == str(round0) and distillation["round"] == 1
    assert distillation["teacher_labels"] == "hard"
    kept = [line for line in lines(out / "teacher_predictions.tsv")[1:] if float(line.split("\t")[-1]) >= 0.4]
    assert distillation["used"] == len(kept)
    rounds = read_json(out / "distill.json")["rounds"]
    assert [(r["round"], r["output_dir"]) for r in rounds] == [(0, str(round0)), (1, str(out))]
    eval_before = read_json(out / "eval_results.json")["eval_accuracy"]

    caplog.set_level(logging.INFO, logger="utils.training.distill")
    assert run_cli(train.main, argv + ["--resume_from_checkpoint", str(out)]) == 0
    assert "round 0: reusing the finished round" in caplog.text
    assert read_json(out / "eval_results.json")["eval_accuracy"] == eval_before


@pytest.mark.parametrize("stopped_in", ["round 0", "the last round"])
def test_rounds_resumed_after_a_rounds_last_checkpoint_end_as_the_uninterrupted_rounds(stopped_in, few_gold,
                                                                                     tiny_model_dir, tmp_path):
    """Self-training in 2 rounds of 4 steps, stopped after a round's checkpoint-4 was saved (before its final
    model) and resumed as a whole: that round takes no further step (a constant learning rate, so one
    cannot hide), the next round trains on what it labels, and both rounds end as in the uninterrupted
    run: the same weights, losses, evaluations and train_loss."""
    from conftest import assert_same_run, interrupted_at

    data_dir, unlabeled, _, _ = few_gold

    def argv(out):
        return student_argv(tiny_model_dir, data_dir, str(out), "--unlabeled_file", unlabeled, "--min_confidence",
                            "0", "--lr_scheduler_type", "constant", "--logging_steps", "3", steps=4)

    uninterrupted = tmp_path / "uninterrupted"
    assert run_cli(train.main, argv(uninterrupted)) == 0
    out = tmp_path / "resumed"
    stopped = out / "rounds" / "round-0" if stopped_in == "round 0" else out
    with interrupted_at("checkpoint-4 saved", str(stopped)):
        assert run_cli(train.main, argv(out)) == 130
    assert not (out / "distill.json").exists() and not (stopped / "train_results.json").exists()
    assert run_cli(train.main, argv(out) + ["--resume_from_checkpoint", str(out)]) == 0
    for directory in ("rounds/round-0", "."):
        assert_same_run(str(uninterrupted / directory), str(out / directory))


def test_an_ensemble_export_is_a_teacher(ensemble_run):
    from utils.deploy.classifier import Classifier
    from utils.dataset.folder import load_dataset_dir
    from utils.training.distill import Teacher

    data_dir, out = ensemble_run
    teacher = Teacher.resolve(out)
    assert (teacher.kind, teacher.path) == ("export", os.path.join(out, "export"))
    test = load_dataset_dir(data_dir, need_train=False, need_dev=False, need_test=True).test
    probs = Classifier(teacher.path, num_threads=1).predict_proba([e["text_a"] for e in test])
    from utils.task.decoding import softmax

    np.testing.assert_allclose(softmax(teacher.logits(test)), probs, atol=1e-6)


def write(path, text):
    with open(path, "w", encoding="utf-8") as fp:
        fp.write(text)
    return str(path)


# (case, flags (TEACHER / UNLABELED / OTHER_VOCAB_MODEL / EMPTY are replaced), expected text, where)
CASES = [
    ("empty unlabeled file", ["--teacher", "TEACHER", "--unlabeled_file", "EMPTY"], "has no texts", "empty.txt"),
    ("labelled lines as unlabeled texts", ["--teacher", "TEACHER", "--unlabeled_file", "LABELLED"],
     "expected one text per line (no tab), found 1 tab", "labelled.txt:1"),
    ("student with another vocab", ["--teacher", "TEACHER", "--unlabeled_file", "UNLABELED",
                                    "--model_name_or_path", "OTHER_VOCAB_MODEL"],
     "the student's vocabulary", "--model_name_or_path"),
    ("teacher of other labels", ["--teacher", "OTHER_LABELS_TEACHER", "--unlabeled_file", "UNLABELED"],
     "the teacher predicts labels", "other-labels"),
    ("teacher not found", ["--teacher", "/nonexistent/teacher", "--unlabeled_file", "UNLABELED"],
     "teacher not found", "/nonexistent/teacher"),
    ("no unlabeled texts", ["--teacher", "TEACHER"], "give --unlabeled_file", "--unlabeled_file"),
    ("every unlabeled text is a training text", ["--teacher", "TEACHER", "--unlabeled_file", "TRAIN_TEXTS"],
     "nothing for the teacher to label", "train-texts.txt"),
    ("confidence out of range", ["--teacher", "TEACHER", "--min_confidence", "1.5"], "must be in [0, 1)",
     "--min_confidence"),
    ("no rounds", ["--unlabeled_file", "UNLABELED", "--rounds", "0"], "must be at least 1", "--rounds"),
    ("distillation flag alone", ["--min_confidence", "0.5"], "add --teacher", "--min_confidence"),
    ("unknown teacher label kind", ["--teacher", "TEACHER", "--teacher_labels", "fuzzy"], "must be one of soft or hard",
     "--teacher_labels"),
    ("RGL with soft labels", ["--teacher", "TEACHER", "--unlabeled_file", "UNLABELED", "--use_rgl"],
     "soft labels do not say", "--use_rgl"),
    ("resuming one round of several", ["--unlabeled_file", "UNLABELED", "--resume_from_checkpoint", "TEACHER"],
     "resumes as a whole", "--resume_from_checkpoint"),
]


@pytest.mark.parametrize("case, flags, message, where", CASES, ids=[c[0] for c in CASES])
def test_bad_inputs(case, flags, message, where, trained, few_gold, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """One paragraph naming the file or flag, exit 2, no traceback, no model loaded, nothing trained."""
    import utils.training.plan
    from helpers import copy_member, rename_label
    from utils.testing.tiny_ernie import build_ernie, vocab_from_texts

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(utils.training.plan, "load_plm", refuse)
    monkeypatch.setattr(utils.training.plan, "rebuild_from_checkpoint", refuse)
    monkeypatch.setattr(utils.training.distill.Teacher, "logits", refuse)
    data_dir, unlabeled, _, _ = few_gold
    replacements = {"TEACHER": lambda: trained[1], "UNLABELED": lambda: unlabeled,
                    "EMPTY": lambda: write(tmp_path / "empty.txt", "\n\n"),
                    "LABELLED": lambda: write(tmp_path / "labelled.txt", "苹果好吃\tapple\n"),
                    "TRAIN_TEXTS": lambda: write(tmp_path / "train-texts.txt", "\n".join(
                        line.split("\t")[0] for line in lines(os.path.join(data_dir, "train.txt"))) + "\n"),
                    "OTHER_VOCAB_MODEL": lambda: build_ernie(str(tmp_path / "other-vocab"),
                                                             vocab_from_texts(["苹果香蕉葡萄红色黄色紫色这句话说的水果是"])),
                    "OTHER_LABELS_TEACHER": lambda: copy_member(trained[1], str(tmp_path / "other-labels"),
                                                                rename_label)}
    flags = [replacements[f]() if f in replacements else f for f in flags]
    out = tmp_path / "out"
    code = run_cli(train.main, student_argv(tiny_model_dir, data_dir, str(out), steps=4) + flags)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err and message in err and where in err, err
    assert not out.exists() or not list(out.iterdir())



def test_soft_target_losses_equal_the_usual_losses_on_gold():
    """Gold labels as one-hot vectors (a student's gold examples) or as ids (dev) give the usual loss."""
    import paddle

    from utils.model.heads import LabelWordNLLLoss, SoftTargetCrossEntropy

    paddle.seed(0)
    logits = paddle.randn([5, 3])
    ids = paddle.to_tensor([0, 2, 1, 1, 0], dtype="int64")
    one_hot = paddle.nn.functional.one_hot(ids, 3)
    usual = paddle.nn.CrossEntropyLoss()(logits, ids)
    for loss in (SoftTargetCrossEntropy()(logits, one_hot), SoftTargetCrossEntropy()(logits, ids)):
        np.testing.assert_allclose(loss.numpy(), usual.numpy(), rtol=1e-6)
    scores = paddle.nn.functional.log_softmax(logits, axis=-1)
    np.testing.assert_allclose(LabelWordNLLLoss(2)(scores, one_hot).numpy(), LabelWordNLLLoss(2)(scores, ids).numpy(),
                               rtol=1e-6)
    soft = paddle.to_tensor([[0.5, 0.5, 0.0]] * 5)
    expected = -(0.5 * scores[:, 0] + 0.5 * scores[:, 1]).mean()
    np.testing.assert_allclose(SoftTargetCrossEntropy()(logits, soft).numpy(), expected.numpy(), rtol=1e-6)


def test_a_multi_label_teacher_teaches_a_multi_label_student(trained_multilabel, tiny_model_dir, tmp_path):
    """Label sets too: the task type comes from the teacher, the teacher's sigmoid probabilities are the
    soft targets (BCE), and the student with 10% of the gold labels gets close to the teacher (measured:
    0.99 against the teacher's 0.98; the same student on its 9 gold lines alone: 0.55)."""
    from utils.testing.synthetic import MULTI_LABEL_PROMPT

    data_dir, teacher = trained_multilabel
    target, unlabeled, _, n_unlabeled = with_few_gold(data_dir, tmp_path)
    out = str(tmp_path / "student")
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", target, "--output_dir", out,
            "--prompt", MULTI_LABEL_PROMPT, "--teacher", teacher, "--unlabeled_file", unlabeled,
            "--do_train", "--do_eval", "--do_predict", "--max_steps", "160", "--eval_steps", "40",
            "--logging_steps", "40", *FAST]
    assert run_cli(train.main, argv) == 0
    spec = read_json(os.path.join(out, "ptuning_config.json"))
    assert spec["task_type"] == "multi-label" and spec["distillation"]["used"] == n_unlabeled
    header = lines(os.path.join(out, "teacher_predictions.tsv"))[0].split("\t")
    assert "labels" in header
    student = read_json(os.path.join(out, "test_results.json"))["test_micro_f1"]
    teacher_f1 = read_json(os.path.join(teacher, "test_results.json"))["test_micro_f1"]
    assert student >= 0.85 * teacher_f1


def imported_modules(path: str, package: str) -> set:
    """Every module a file imports, at the top or inside a function, as absolute names (`from .x import y`
    gives `package.x` and `package.x.y`)."""
    import ast

    with open(path, encoding="utf-8") as fp:
        tree = ast.parse(fp.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_distillation_is_a_mode_that_no_other_training_module_imports():
    """`DistillationRun` subclasses the run; the run, its planning and the trainer never import it (not even
    inside a function): train.py chooses the class from the flags."""
    import glob

    import utils.training
    from utils.training.distill import DistillationRun
    from utils.training.run import Run

    assert issubclass(DistillationRun, Run)
    folder = os.path.dirname(utils.training.__file__)
    importers = [os.path.basename(path) for path in sorted(glob.glob(os.path.join(folder, "*.py")))
                 if os.path.basename(path) != "distill.py"
                 and "utils.training.distill" in imported_modules(path, "utils.training")]
    assert importers == []
    assert train.run_kind(SimpleNamespace(distilling=True)) is DistillationRun
    assert train.run_kind(SimpleNamespace(distilling=False)) is Run
