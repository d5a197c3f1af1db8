"""The file names of a run directory and of its checkpoints (as utils/deploy/format.py is for exports).

The one spelling shared by what writes them (training, distillation, pretrain.py) and what reads,
verifies, removes or reports them (checkpoints, the output-directory rules, ensembles, multirun);
it imports nothing, so every layer can use it.
"""

# -- a model directory: the final model and every checkpoint-N ------------------------------------
SPEC_FILE = "ptuning_config.json"  # the ModelSpec (utils/model/spec.py)
MODEL_STATE_FILE = "model_state.pdparams"  # the weights, every tensor once (utils/model/assembly.py)
TEMPLATE_CONFIG_FILE = "template_config.json"  # paddlenlp's template files, written beside the weights
TEMPLATE_STATE_FILE = "template_state.pdparams"
VERBALIZER_CONFIG_FILE = "verbalizer_config.json"
VERBALIZER_STATE_FILE = "verbalizer_state.pdparams"
VOCAB_FILE = "vocab.txt"  # the tokenizer's files (paddlenlp's save_pretrained names them)
TOKENIZER_FILES = (VOCAB_FILE, "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
PLM_CONFIG_FILE = "config.json"  # a PaddleNLP model directory's config (pretrain.py's output, a PLM)
PRETRAINING_FILE = "pretraining.json"  # pretrain.py's record: its model is a language model, not a classifier
COMPLETE_MARKER = "checkpoint_complete.json"  # every file with size and sha256, written last

# -- what a checkpoint adds to resume training ----------------------------------------------------
OPTIMIZER_FILE = "optimizer.pdopt"
SCHEDULER_FILE = "scheduler.pdparams"
TRAINER_STATE_FILE = "trainer_state.json"  # paddlenlp's Trainer state (log history, best checkpoint)
TRAINING_ARGS_FILE = "training_args.bin"
# The training loop's loss bookkeeping at the save, so a resumed run logs the losses of an
# uninterrupted one; checkpoints of earlier versions lack it.
LOSS_STATE_FILE = "loss_state.json"
CHECKPOINT_PREFIX = "checkpoint-"  # checkpoint-N, N the global step


def rng_file(world_size: int) -> str:
    """The Trainer's RNG state file: one per process count."""
    return "rng_state.pth" if world_size <= 1 else f"rng_state_{world_size}.pth"


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step}"


# -- the run's results ----------------------------------------------------------------------------
LOCK_FILE = ".ptuning.lock"  # one process per run directory (utils/rundir/plan.py)
ALL_RESULTS_FILE = "all_results.json"
CURVES_FILE = "training_curves.png"
TEST_PREDICTIONS_FILE = "test_predictions.tsv"
DATA_PREDICTIONS_FILE = "data_predictions.tsv"
EXPORT_DIR = "export"  # --do_export's export (its own names: utils/deploy/format.py)
ROUNDS_DIR = "rounds"  # self-training / distillation (utils/training/distill.py)
DISTILL_SUMMARY_FILE = "distill.json"
TEACHER_PREDICTIONS_FILE = "teacher_predictions.tsv"


def results_file(split: str) -> str:
    """`train_results.json`, `eval_results.json`, `test_results.json`: one split's metrics."""
    return f"{split}_results.json"


TRAIN_RESULTS_FILE, EVAL_RESULTS_FILE, TEST_RESULTS_FILE = (results_file(s) for s in ("train", "eval", "test"))

# -- how the run was made, and its card -----------------------------------------------------------
RUN_RECORD_FILE = "run.json"  # the command lines that wrote the directory and the data they read (rundir/record.py)
CARD_FILE = "README.md"  # the model card (utils/reporting/card.py), in run and export directories
CARD_MARKER = "<!-- model card written by ptuning-fewshot"  # a README.md without it is the user's: never touched


def is_tool_card(path: str) -> bool:
    """Whether `path` is a model card this tool wrote (so it may be replaced or removed)."""
    try:
        with open(path, encoding="utf-8") as fp:
            return CARD_MARKER in fp.read(1 << 16)
    except (OSError, UnicodeDecodeError):
        return False
