"""Explanations (utils/reporting/explain.py, explain.py): integrated gradients are sane (completeness; the
keyword task's keyword is the top-attributed token), the HTML/JSON files and the bad-case report,
and the HTML renders in a real headless browser."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from utils.testing.synthetic import KEYWORDS


@pytest.fixture(scope="module")
def explainer(trained):
    from utils.reporting.explain import Explainer
    from utils.model.assembly import rebuild_from_checkpoint

    _, out = trained
    model, tokenizer, spec = rebuild_from_checkpoint(out)
    return Explainer(model, tokenizer, spec, steps=32)


def dev_examples(data_dir):
    rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(data_dir, "dev.txt"), encoding="utf-8")
            if line.strip()]
    return [{"text_a": text} for text, _ in rows], [label for _, label in rows]


def test_integrated_gradients_are_complete(trained, explainer):
    examples, _ = dev_examples(trained[0])
    for example in examples[:4]:
        e = explainer.explain(example)
        assert len(e.tokens) == len(example["text_a"])  # one token per character, the text only
        assert "".join(e.tokens) == example["text_a"]
        difference = e.logit - e.baseline_logit
        assert e.completeness_gap <= 0.05 * max(1.0, abs(difference)), (e.completeness_gap, difference)


def test_the_keyword_is_the_top_attributed_token_in_90_percent_of_dev_texts(trained, explainer):
    examples, gold = dev_examples(trained[0])
    hits = 0
    for example, label in zip(examples, gold):
        e = explainer.explain(example, label=label)
        top = int(np.argmax(e.attributions))
        keyword = KEYWORDS[label][0]
        start = example["text_a"].find(keyword)
        hits += start <= top < start + len(keyword)
    rate = hits / len(examples)
    print(f"keyword top-attributed in {hits}/{len(examples)} dev texts ({rate:.2%})")
    assert rate >= 0.9


def test_explain_script_writes_html_json_and_the_bad_case_report(trained, tmp_path, capsys):
    import explain
    from utils.errors import run_cli

    data_dir, out = trained
    # dev.txt with three gold labels made wrong: the model's answers to them become errors
    shutil.copytree(data_dir, tmp_path / "data")
    data_dir = str(tmp_path / "data")
    lines = open(os.path.join(data_dir, "dev.txt"), encoding="utf-8").read().splitlines()
    names = sorted(KEYWORDS)
    for i in range(3):
        text, label = lines[i].split("\t")
        lines[i] = f"{text}\t{names[(names.index(label) + 1) % 3]}"
    open(os.path.join(data_dir, "dev.txt"), "w", encoding="utf-8").write("\n".join(lines) + "\n")
    target = str(tmp_path / "explanations")
    assert run_cli(explain.main, ["--resume_from_checkpoint", out, "--text", "一二苹果三四", "--text", "香蕉在这里",
                                  "--data_dir", data_dir, "--bad_cases", "dev", "--output_dir", target,
                                  "--steps", "16"]) == 0
    with open(os.path.join(target, "explanations.json"), encoding="utf-8") as fp:
        records = json.load(fp)
    assert [r["text"]["text_a"] for r in records] == ["一二苹果三四", "香蕉在这里"]
    for r in records:
        assert len(r["tokens"]) == len(r["attributions"]) and r["label"] == r["predicted"]
        assert set(r["probabilities"]) == set(KEYWORDS)
    page = open(os.path.join(target, "explanations.html"), encoding="utf-8").read()
    assert "苹" in page and "data-attribution" in page
    with open(os.path.join(target, "bad_cases_dev.json"), encoding="utf-8") as fp:
        cases = json.load(fp)
    confidences = [c["confidence"] for c in cases]
    assert len(cases) >= 3 and confidences == sorted(confidences, reverse=True)
    assert {lines[i].split("\t")[0] for i in range(3)} <= {c["text"]["text_a"] for c in cases}
    assert all(c["gold"] != c["predicted"] for c in cases)
    assert os.path.isfile(os.path.join(target, "bad_cases_dev.html"))


def test_explain_script_bad_inputs_are_reported_before_the_model_loads(trained, tmp_path, capsys):
    import explain
    from utils.errors import run_cli

    data_dir, out = trained
    afile = tmp_path / "f"
    afile.write_text("x")
    cases = [(["--resume_from_checkpoint", str(tmp_path / "none"), "--text", "x"], "not found"),
             (["--resume_from_checkpoint", out], "nothing to explain"),
             (["--resume_from_checkpoint", out, "--text", "x", "--label", "pear"], "--label"),
             (["--resume_from_checkpoint", out, "--text", "x", "--steps", "0"], "--steps"),
             (["--resume_from_checkpoint", out, "--bad_cases", "dev"], "--data_dir"),
             (["--resume_from_checkpoint", out, "--text", "x", "--output_dir", str(afile)], "--output_dir"),
             (["--resume_from_checkpoint", out, "--text", "  "], "empty text")]
    for argv, needle in cases:
        assert run_cli(explain.main, argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and "Traceback" not in err, (argv, err)


def find_browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless_shell"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_the_html_renders_in_a_headless_browser(trained, explainer, tmp_path):
    """A real browser draws the page (Chinese text as is); the screenshot is left in the test's
    tmp directory (pytest's artifacts), never committed."""
    from utils.reporting.explain import write_explanations

    browser = find_browser()
    if browser is None:
        pytest.skip("no headless browser installed (apt-get install chromium, or `make dev` installs it)")
    examples, gold = dev_examples(trained[0])
    paths = write_explanations(str(tmp_path), "explanations",
                               [explainer.explain(e) for e in examples[:3]], "Token attributions")
    page = open(paths["html"], encoding="utf-8").read()
    assert "@font-face" in page and "base64," in page  # the page's own characters, drawn without a system CJK font
    shot = tmp_path / "explanations.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1000,600", "file://" + paths["html"]],
                   check=True, timeout=120, capture_output=True)
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 600)
    pixels = np.asarray(image)
    # the page is not blank: shaded tokens (green or red backgrounds) and dark text are drawn
    assert (pixels.std(axis=(0, 1)) > 5).all()
    greenish = ((pixels[:, :, 1] > pixels[:, :, 0] + 20) & (pixels[:, :, 1] > pixels[:, :, 2] + 20)).sum()
    assert greenish > 50
    print(f"screenshot: {shot}")


@pytest.mark.parametrize("head_flags", [["--verbalizer", "manual"], ["--method", "finetune"]],
                         ids=["manual", "finetune"])
def test_every_head_kind_is_explained_completely(tiny_model_dir, tmp_path, head_flags):
    """The manual verbalizer (several masks) and the [CLS] baseline (no mask, no soft prompt) go
    through the same `export_scores` path; a few training steps suffice for the check."""
    import train
    from conftest import FAST
    from utils.errors import run_cli
    from utils.reporting.explain import Explainer
    from utils.model.assembly import rebuild_from_checkpoint
    from utils.testing.synthetic import PROMPT, write_keyword_dataset

    data_dir = write_keyword_dataset(str(tmp_path / "data"), train_per_class=4)
    out = str(tmp_path / "out")
    assert run_cli(train.main, ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir", out,
                                "--prompt", PROMPT, "--do_train", "--max_steps", "3", "--evaluation_strategy", "no",
                                "--save_strategy", "no", *head_flags, *FAST]) == 0
    model, tokenizer, spec = rebuild_from_checkpoint(out)
    e = Explainer(model, tokenizer, spec, steps=48).explain({"text_a": "一二葡萄三四"})
    assert "".join(e.tokens) == "一二葡萄三四"
    assert e.completeness_gap <= 0.05 * max(1.0, abs(e.logit - e.baseline_logit))
