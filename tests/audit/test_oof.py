"""utils/audit/oof.py: fold runs are resumable and reused. A killed audit, run again with the same flags, trains
only the folds it had not finished (the interrupted one from its checkpoint) and ends as an uninterrupted
audit; the same flags again train nothing; other flags are refused and nothing is overwritten."""
import os

import pytest
from conftest import FAST, interrupted_at
from helpers import read_json

import audit
import utils.audit.oof
from utils.errors import run_cli
from utils.testing.synthetic import PROMPT


def audit_argv(model, data, out, *extra):
    return ["--data_dir", data, "--output_dir", str(out), "--folds", "2", "--model_name_or_path", model,
            "--prompt", PROMPT, "--max_steps", "8", "--eval_steps", "4", "--logging_steps", "4", *FAST, *extra]


@pytest.fixture
def trained_folds(monkeypatch):
    """The numbers of the folds that train (not reused) during the test."""
    trained = []
    real = utils.audit.oof.run_fold

    def recording(flags, fold, pool, digest):
        trained.append(fold.number)
        return real(flags, fold, pool, digest)

    monkeypatch.setattr(utils.audit.oof, "run_fold", recording)
    return trained


def files_of(out):
    return {name: (out / name).read_bytes() for name in ("label_issues.tsv", "oof_probabilities.tsv")}


@pytest.mark.slow
def test_a_killed_audit_resumes_its_remaining_folds_only_and_ends_as_an_uninterrupted_one(
        tiny_model_dir, keyword_data, tmp_path, trained_folds, capsys):
    reference = tmp_path / "reference"
    assert run_cli(audit.main, audit_argv(tiny_model_dir, keyword_data, reference)) == 0
    assert trained_folds == [1, 2]

    out = tmp_path / "audit"
    fold2 = out / "folds" / "fold-2"
    with interrupted_at("checkpoint-4 saved", str(fold2 / "run")):   # killed mid-way through fold 2
        assert run_cli(audit.main, audit_argv(tiny_model_dir, keyword_data, out)) == 130
    done1 = out / "folds" / "fold-1" / "oof.json"
    assert done1.is_file() and not (fold2 / "oof.json").exists() and not (out / "label_issues.tsv").exists()
    stamp = done1.stat().st_mtime_ns

    del trained_folds[:]
    assert run_cli(audit.main, audit_argv(tiny_model_dir, keyword_data, out)) == 0
    assert trained_folds == [2]                               # fold 1 was reused, untouched
    assert done1.stat().st_mtime_ns == stamp
    assert read_json(fold2 / "oof.json")["resumed_from_checkpoint"] is True
    assert files_of(out) == files_of(reference)               # as if never interrupted
    assert "done earlier, reused" in capsys.readouterr().err

    del trained_folds[:]
    assert run_cli(audit.main, audit_argv(tiny_model_dir, keyword_data, out, "--max_issues", "1")) == 0
    assert trained_folds == []                                # same flags: every fold reused (the cap is the report's)
    assert len((out / "label_issues.tsv").read_text(encoding="utf-8").splitlines()) <= 2

    before = files_of(out)
    assert run_cli(audit.main, audit_argv(tiny_model_dir, keyword_data, out, "--learning_rate", "5e-4")) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "--learning_rate" in err and "--overwrite_output_dir" in err
    assert files_of(out) == before and trained_folds == []

    assert run_cli(audit.main, audit_argv(tiny_model_dir, keyword_data, out, "--learning_rate", "5e-4",
                                          "--overwrite_output_dir")) == 0
    assert trained_folds == [1, 2]                            # changed flags with --overwrite_output_dir: redone
    assert read_json(out / "audit_config.json")["train_flags"] != read_json(reference / "audit_config.json")[
        "train_flags"]
    assert os.path.isdir(out / "folds" / "fold-2" / "run")
