"""Parameter groups, learning rates, freezing and template construction on the tiny model."""
import numpy as np
import pytest

from utils.flags.train import parse_args
from utils.errors import UserError
from utils.dataset.labels import LabelSet
from utils.model.assembly import build_prompt_model
from utils.model.plm import load_plm
from utils.model.prompt import build_template
from utils.training.run import Run, prepare


def make_trainer(tiny_model_dir, data_dir, out_dir, *extra):
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir", str(out_dir),
            "--prompt", "这句话说的水果是", "--max_seq_length", "32", "--learning_rate", "1e-4",
            "--ppt_learning_rate", "5e-3", "--do_train", "--max_steps", "1", "--lr_scheduler_type", "constant",
            "--per_device_train_batch_size", "8", "--save_steps", "1000", "--logging_steps", "1000", *extra]
    run = Run(*parse_args(argv)).open()
    try:
        return prepare(run)
    finally:
        run.close(failed=False)  # (the output-dir lock: these tests train in memory only)


def snapshot(params):
    return {name: p.numpy().copy() for name, p in params}


def max_step(before, params):
    return max(float(np.abs(p.numpy() - before[name]).max()) for name, p in params)


def split_params(model):
    plm = list(model.plm.named_parameters())
    template = model.template
    prompt = [("template.soft_embeddings", template.soft_embeddings.weight)]
    prompt += [("template.encoder." + n, p) for n, p in template.encoder_list.named_parameters()]
    prompt += [("verbalizer." + n, p) for n, p in model.verbalizer.head_parameters()]
    return plm, prompt


def test_two_param_groups_with_their_learning_rates(tiny_model_dir, keyword_data, tmp_path):
    trainer = make_trainer(tiny_model_dir, keyword_data, tmp_path / "out")
    model = trainer.model
    plm, prompt = split_params(model)
    before_plm, before_prompt = snapshot(plm), snapshot(prompt)
    trainer.train()

    groups = trainer.optimizer._param_groups
    assert len(groups) == 2
    assert groups[1]["learning_rate"] == pytest.approx(5e-3 / 1e-4)  # a multiplier on the PLM's rate
    prompt_ids = {id(p) for _, p in prompt}
    assert prompt_ids <= {id(p) for p in groups[1]["params"]}
    assert not prompt_ids & {id(p) for p in groups[0]["params"]}
    # Adam's first step moves each weight by about its learning rate: the rates really apply.
    assert max_step(before_plm, plm) == pytest.approx(1e-4, rel=0.02)
    assert max_step(before_prompt, prompt) == pytest.approx(5e-3, rel=0.02)


def test_freeze_plm_keeps_plm_bit_identical(tiny_model_dir, keyword_data, tmp_path):
    trainer = make_trainer(tiny_model_dir, keyword_data, tmp_path / "out", "--freeze_plm")
    plm, prompt = split_params(trainer.model)
    before_plm, before_prompt = snapshot(plm), snapshot(prompt)
    trainer.train()
    for name, param in plm:
        assert np.array_equal(param.numpy(), before_plm[name]), name
    moved = [n for n, p in prompt if not np.array_equal(p.numpy(), before_prompt[n])]
    assert any(n.startswith("template.soft_embeddings") for n in moved)
    assert any(n.startswith("template.encoder.") for n in moved)
    assert any(n.startswith("verbalizer.") for n in moved)
    assert max_step(before_prompt, prompt) == pytest.approx(5e-3, rel=0.02)


def test_freeze_dropout_survives_train_mode(tiny_model_dir):
    plm, tokenizer = load_plm(tiny_model_dir)
    parts = build_template("水果是", "lstm", 16)
    model = build_prompt_model(plm, tokenizer, parts, LabelSet({"a": "红色", "b": "黄色"}), 32,
                               freeze_dropout=True)
    model.train()  # what the Trainer does every step
    assert not model.plm.training
    from paddlenlp.prompt import PromptDataCollatorWithPadding

    batch = PromptDataCollatorWithPadding(tokenizer, return_tensors="pd")([model.template({"text_a": "苹果"})])
    batch.pop("labels", None)
    first, second = model(**batch).numpy(), model(**batch).numpy()
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("encoder, layer", [("lstm", "SoftLSTM"), ("mlp", "Sequential"), ("none", None)])
def test_template_encoders(tiny_model_dir, encoder, layer):
    plm, tokenizer = load_plm(tiny_model_dir)
    parts = build_template("这句话说的水果是", encoder, 24)
    model = build_prompt_model(plm, tokenizer, parts, LabelSet({"a": "红色", "b": "黄色"}), 32)
    template = model.template
    n_prompt_tokens = len(tokenizer("这句话说的水果是", add_special_tokens=False)["input_ids"])
    assert template.num_soft_token == n_prompt_tokens + 1  # id 0 means "not soft"
    encoders = [type(e).__name__ for e in template.encoder_list]
    assert encoders == ["Identity"] + ([layer] if layer else [])
    if encoder == "lstm":
        assert template.encoder_list[1].lstm.hidden_size == 24
    # Soft embeddings start from the prompt text's word embeddings.
    word_ids = tokenizer("这句话说的水果是", add_special_tokens=False)["input_ids"]
    np.testing.assert_allclose(template.soft_embeddings.weight.numpy()[1:],
                               plm.get_input_embeddings().weight.numpy()[word_ids], atol=1e-7)
    encoded = template({"text_a": "苹果"})
    assert encoded["soft_token_ids"][1:1 + n_prompt_tokens] == list(range(1, n_prompt_tokens + 1))
    # input_ids hold the soft ids at soft positions; the one [MASK] is among the real tokens.
    real = [t for t, soft in zip(encoded["input_ids"], encoded["soft_token_ids"]) if soft == 0]
    assert real.count(tokenizer.mask_token_id) == 1


def test_max_seq_length_shorter_than_prompt(tiny_model_dir):
    plm, tokenizer = load_plm(tiny_model_dir)
    parts = build_template("这句话说的水果是", "lstm", 16)
    with pytest.raises(UserError, match="--max_seq_length: is 10, but the prompt alone takes 11 tokens"):
        build_prompt_model(plm, tokenizer, parts, LabelSet({"a": "红色", "b": "黄色"}), 10)
