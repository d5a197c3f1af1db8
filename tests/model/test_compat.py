"""The Paddle 3 fix for SoftTemplate.process_batch: needed, and numerically what upstream meant."""
import numpy as np
import paddle
import pytest

from utils.model import compat
from utils.dataset.labels import LabelSet
from utils.model.assembly import build_prompt_model
from utils.model.plm import load_plm
from utils.model.prompt import build_template

LABELS = LabelSet({"a": "红色", "b": "黄色"})


def make_batch(model, texts):
    from paddlenlp.prompt import PromptDataCollatorWithPadding

    collate = PromptDataCollatorWithPadding(model.template.tokenizer, padding=True, return_tensors="pd")
    batch = collate([model.template({"text_a": t}) for t in texts])
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.fixture(params=["lstm", "mlp"])
def prompt_model(request, tiny_model_dir):
    paddle.seed(0)
    plm, tokenizer = load_plm(tiny_model_dir)
    parts = build_template("这句话说的水果是", soft_encoder=request.param, encoder_hidden_size=16)
    model = build_prompt_model(plm, tokenizer, parts, LABELS, max_seq_length=32)
    model.eval()
    return model


def test_upstream_process_batch_crashes_on_this_paddle(prompt_model):
    batch = make_batch(prompt_model, ["苹果好吃", "香蕉"])
    with pytest.raises(ValueError, match="squeeze|axis"):
        compat.original("process_batch")(prompt_model.template, dict(batch))


def test_fixed_process_batch_encodes_soft_tokens(prompt_model):
    template = prompt_model.template
    batch = make_batch(prompt_model, ["苹果好吃", "香蕉"])
    out = compat.soft_template_process_batch(template, dict(batch))
    embeds = out["inputs_embeds"].numpy()

    # Reference: every soft token goes through the encoder as one sequence, the rest are word embeddings.
    soft_ids = batch["soft_token_ids"].numpy()
    n_soft = int((soft_ids[0] > 0).sum())
    soft_seq = template.soft_embeddings(paddle.arange(1, n_soft + 1).unsqueeze(0))
    encoded = template.encoder_list[1](soft_seq).numpy()[0]
    words = template.word_embeddings(batch["input_ids"]).numpy()
    for row in range(soft_ids.shape[0]):
        positions = np.nonzero(soft_ids[row])[0]
        np.testing.assert_allclose(embeds[row, positions], encoded, atol=1e-5)
        others = soft_ids[row] == 0
        np.testing.assert_allclose(embeds[row, others], words[row, others], atol=1e-6)
    assert out["input_ids"] is None and out["attention_mask"] is not None


def test_apply_installs_the_fixes_and_an_unpatched_model_crashes(prompt_model, monkeypatch):
    from paddlenlp.prompt import SoftTemplate

    # conftest applied the fixes as train.py does: undo them (monkeypatch restores them after the
    # test), so that what is checked below is what this call to apply() installs.
    monkeypatch.setattr(compat, "_applied", False)
    monkeypatch.setattr(SoftTemplate, "process_batch", compat.original("process_batch"))
    monkeypatch.setattr(SoftTemplate, "named_parameters", compat.original("named_parameters"))
    monkeypatch.delattr(SoftTemplate, "parameters")  # upstream's is gone; Layer.parameters shows through
    with pytest.raises(ValueError, match="squeeze|axis"):  # unpatched, the model crashes
        prompt_model(**make_batch(prompt_model, ["苹果", "葡萄很甜", "香蕉"]))
    compat.apply()
    assert SoftTemplate.process_batch is compat.soft_template_process_batch
    assert SoftTemplate.named_parameters is compat.soft_template_named_parameters
    assert SoftTemplate.parameters is compat.soft_template_parameters
    assert prompt_model(**make_batch(prompt_model, ["苹果", "葡萄很甜", "香蕉"])).shape == [3, 2]
    compat.apply()  # idempotent
    assert SoftTemplate.process_batch is compat.soft_template_process_batch


def test_apply_refuses_a_paddlenlp_it_was_not_written_for(monkeypatch):
    import paddlenlp

    from utils.errors import UserError

    monkeypatch.setattr(compat, "_applied", False)
    monkeypatch.setattr(paddlenlp, "__version__", "3.0.0")
    with pytest.raises(UserError, match="written for version 2.8.1, but 3.0.0 is installed"):
        compat.apply()
    monkeypatch.setattr(paddlenlp, "__version__", "2.8.1.post")
    compat.apply()


def test_building_a_prompt_model_needs_the_fixes_applied(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(compat, "_applied", False)
    plm, tokenizer = load_plm(tiny_model_dir)
    with pytest.raises(RuntimeError, match="compat.apply"):
        build_prompt_model(plm, tokenizer, build_template("水果"), LABELS, max_seq_length=32)


def test_no_prompt_string_ever_reaches_paddlenlps_eval_parser(tiny_model_dir, monkeypatch):
    """paddlenlp's Template.parse_template_string runs eval(); this tool parses prompts itself and
    hands paddlenlp the parts, so that parser is never called (and needs no patch)."""
    from paddlenlp.prompt.template import Template

    def refuse(*args, **kwargs):
        raise AssertionError("paddlenlp's eval-based template parser was called")

    monkeypatch.setattr(Template, "parse_template_string", staticmethod(refuse))
    for prompt in ("这句话说的水果是", "{'soft': None, 'length': 3, 'encoder': 'mlp'}{'text': 'text_a'}是{'mask'}"):
        plm, tokenizer = load_plm(tiny_model_dir)  # (the SoftVerbalizer takes over each PLM's MLM head)
        model = build_prompt_model(plm, tokenizer, build_template(prompt), LABELS, max_seq_length=32)
        assert model(**make_batch(model, ["苹果"])).shape == [1, 2]


def test_named_parameters_accepts_paddle_arguments(prompt_model):
    """paddle.DataParallel calls named_parameters(include_sublayers=False) on every sublayer."""
    template = prompt_model.template
    with pytest.raises(TypeError):
        compat.original("named_parameters")(template, include_sublayers=False)
    assert list(template.named_parameters(include_sublayers=False)) == []
    params = template.parameters()
    assert any(p is template.soft_embeddings.weight for p in params)
    assert all(p is not template.word_embeddings.weight for p in params)  # the PLM's stay out
    assert len(params) == len(list(template.soft_embeddings.parameters())) + len(
        list(template.encoder_list.parameters()))
