"""utils/audit/oof.py: fold runs are resumable and reused. A killed audit, run again with the same flags, trains
only the folds it had not finished (the interrupted one from its checkpoint) and ends as an uninterrupted
audit; the same flags again train nothing; other flags are refused and nothing is overwritten."""
import os

import numpy as np
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


def fake_fold_runs(monkeypatch, pool):
    """`run_fold` replaced: fold F of repeat R gives each held-out example the probabilities
    `one_hot(example's given label) * R / 10 + (1 - R / 10) / labels` and writes its oof.json; returns the
    (repeat, fold) pairs run."""
    from utils.files import write_json_atomic

    ran = []

    def fake(flags, fold, pool_, digest):
        ran.append((fold.repeat, fold.number))
        width = len(pool.labels.labels)
        rows = [[(fold.repeat / 10) * (j == pool.given()[i][0]) + (1 - fold.repeat / 10) / width for j in range(width)]
                for i in fold.held_out]
        done = {"fingerprint": digest, "repeat": fold.repeat, "fold": fold.number, "seed": fold.seed,
                "rows": fold.held_out, "probabilities": rows, "decided": [[p > 0.5 for p in r] for r in rows],
                "labels": pool.labels.labels}
        write_json_atomic(fold.oof_path, done)
        return done

    monkeypatch.setattr(utils.audit.oof, "run_fold", fake)
    return ran


def test_repeats_split_and_seed_differently_and_their_probabilities_are_averaged(keyword_data, tmp_path,
                                                                                   monkeypatch):
    from utils.audit.folds import read_pool
    from utils.audit.oof import out_of_fold, plan_repeats

    pool = read_pool(keyword_data, "multi-class", include_dev=False)
    ran = fake_fold_runs(monkeypatch, pool)
    repeats = plan_repeats(pool, str(tmp_path), 3, seed=42, fraction=0.1, repeats=2)
    first, second = repeats
    assert [f.directory for f in first] == [str(tmp_path / "folds" / f"fold-{k}") for k in (1, 2, 3)]  # as without
    assert [f.directory for f in second] == [str(tmp_path / "folds" / "repeat-2" / f"fold-{k}") for k in (1, 2, 3)]
    assert {f.seed for f in first} == {42} and {f.seed for f in second} == {43}
    assert [f.held_out for f in first] != [f.held_out for f in second]                 # another split
    assert sorted(i for f in second for i in f.held_out) == list(range(96))            # each held out once again
    oof = out_of_fold(None, pool, repeats, "digest")
    given = np.array([g[0] for g in pool.given()])
    assert oof["probabilities"][np.arange(96), given] == pytest.approx(0.15 + 0.85 / 3)   # repeats' weights 0.1, 0.2
    assert np.allclose(oof["probabilities"], np.mean(oof["per_repeat"], axis=0))
    assert np.allclose(oof["probabilities"].sum(axis=1), 1)
    assert sorted(ran) == [(r, k) for r in (1, 2) for k in (1, 2, 3)]

    del ran[:]
    more = plan_repeats(pool, str(tmp_path), 3, seed=42, fraction=0.1, repeats=3)
    out_of_fold(None, pool, more, "digest")
    assert sorted(ran) == [(3, 1), (3, 2), (3, 3)]                # raising --repeats reuses the finished repeats


def test_each_repeat_trains_with_its_own_seed(keyword_data, tmp_path):
    from utils.flags.audit import parse_audit_args
    from utils.flags.train import parse_args

    flags = parse_audit_args(["--data_dir", keyword_data, "--output_dir", str(tmp_path), "--model_name_or_path", "x",
                              "--seed", "7", "--repeats", "2"])
    assert flags.audit.repeats == 2
    training = parse_args(flags.fold_argv(str(tmp_path / "d"), str(tmp_path / "r"), False, 8))[2]
    assert training.seed == 8


def test_round_two_trains_without_round_ones_suspects_judges_every_example_and_is_reused(keyword_data, tmp_path,
                                                                                         monkeypatch):
    """--audit_rounds 2: round 2's folds never train on the examples round 1 flagged, still predict them, and write
    their own oof.json (which records the exclusions); run again, every fold of both rounds is reused."""
    from types import SimpleNamespace

    from utils.audit.folds import read_pool
    from utils.audit.pipeline import audit_rounds
    from utils.files import write_json_atomic

    pool = read_pool(keyword_data, "multi-class", include_dev=False)
    width, wrong = len(pool.labels.labels), set(range(0, 96, 12))   # 8 examples whose models answer another label
    ran = []

    def fake(flags, fold, pool_, digest):
        ran.append((fold.round, fold.number, tuple(fold.excluded), tuple(fold.train)))
        rows = [[0.9 * (j == (pool.given()[i][0] + (i in wrong)) % width) + 0.1 / width for j in range(width)]
                for i in fold.held_out]
        done = {"fingerprint": digest, "round": fold.round, "excluded": fold.excluded, "repeat": fold.repeat,
                "fold": fold.number, "seed": fold.seed, "rows": fold.held_out, "probabilities": rows,
                "decided": [[p > 0.5 for p in r] for r in rows], "labels": pool.labels.labels}
        write_json_atomic(fold.oof_path, done)
        return done

    monkeypatch.setattr(utils.audit.oof, "run_fold", fake)
    flags = SimpleNamespace(audit=SimpleNamespace(audit_rounds=2, folds=3, repeats=1, selection_fraction=0.1),
                            training=SimpleNamespace(seed=42))
    oof, issues, rounds = audit_rounds(flags, pool, str(tmp_path), "digest")
    assert sorted(issue.index for issue in issues) == sorted(wrong)
    assert [r["trained_without"] for r in rounds] == [0, 8] and [r["issues_found"] for r in rounds] == [8, 8]
    first, second = ran[:3], ran[3:]
    assert all(r[0] == 1 and r[2] == () for r in first)
    assert all(r[0] == 2 and set(r[2]) == wrong and not wrong & set(r[3]) for r in second)
    assert sorted(i for fold in utils.audit.oof.plan_folds(pool, str(tmp_path), 3, 42, 0.1, 1, 2, sorted(wrong))
                  for i in fold.held_out) == list(range(96))    # round 2 still judges every example
    assert (tmp_path / "folds" / "round-2" / "fold-1" / "oof.json").is_file()

    del ran[:]
    audit_rounds(flags, pool, str(tmp_path), "digest")
    assert ran == []                                             # both rounds reused
