"""The run (utils/training/run.py): the parsed flags stay as the user gave them."""
import copy
from types import SimpleNamespace

from utils.flags.train import parse_args
from utils.training.run import trainer_arguments
from utils.training.visualdl import SafeVisualDLCallback


def test_the_trainer_gets_derived_arguments_and_the_parsed_flags_are_never_changed(keyword_data, tmp_path):
    _, _, flags = parse_args(["--data_dir", keyword_data, "--output_dir", str(tmp_path / "out"), "--do_train",
                              "--freeze_plm", "--num_train_epochs", "2", "--per_device_train_batch_size", "4",
                              "--report_to", "visualdl", "--device", "cpu"])
    flags.resume_from_checkpoint = str(tmp_path / "out" / "checkpoint-4")   # as Run.open resolves it
    given = copy.deepcopy(vars(flags))
    run = SimpleNamespace(args=flags, dataset=SimpleNamespace(train=[{}] * 10))

    args, callbacks = trainer_arguments(run)

    assert vars(flags) == given                        # nothing written back into the parsed flags
    assert args.resume_from_checkpoint is None         # the model is already rebuilt from it
    assert args.max_steps == 2 * 3                     # ceil(10 / 4) batches x 2 epochs: --freeze_plm needs steps
    assert "visualdl" not in args.report_to
    assert any(isinstance(c, SafeVisualDLCallback) for c in callbacks)


def test_freeze_plm_epochs_count_the_examples_trained_on_long_text_windows(keyword_data, tmp_path):
    """--long_text window trains on windows: 10 documents read as 25 windows are 25 examples an epoch."""
    _, _, flags = parse_args(["--data_dir", keyword_data, "--output_dir", str(tmp_path / "out"), "--do_train",
                              "--freeze_plm", "--num_train_epochs", "2", "--per_device_train_batch_size", "4",
                              "--device", "cpu"])
    run = SimpleNamespace(args=flags, dataset=SimpleNamespace(train=[{}] * 10))
    args, _ = trainer_arguments(run, num_examples=25)
    assert args.max_steps == 2 * 7                     # ceil(25 / 4) batches x 2 epochs, not ceil(10 / 4)
