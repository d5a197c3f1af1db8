# Two commands do all the set-up:  `make demo`  (offline demo on data/example)  and  `make test`.
# PYTHON picks the interpreter that creates .venv; VENV=/path reuses another environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The lock (constraints.txt) was resolved on CPython 3.11; other versions resolve requirements.txt freely.
# Asked of the interpreter the venv has or will have: a recipe is expanded before its first line makes the venv.
LOCK = $(shell $$(test -x $(PY) && echo $(PY) || echo $(PYTHON)) -c 'import sys; print("-c constraints.txt" if sys.version_info[:2] == (3, 11) else "")' 2>/dev/null)
PIP = $(PY) -m pip install -q --disable-pip-version-check $(LOCK)
# The demo's own model directory: never checkpoints/tiny-ernie, where users keep theirs.
DEMO_MODEL := checkpoints/demo-tiny-ernie
DEMO_OUT := checkpoints/demo
DEMO_PROMPT := 这条新闻的主题是

.PHONY: install install-dev install-ray install-labelstudio browser demo demo-label-sets test docs-check docs-reference bench bench-fusion bench-ray \
  bench-unlabeled quality clean

$(VENV)/.installed: requirements.txt requirements-cpu.txt constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# CPU builds only where no (GPU) build is importable: never replace paddlepaddle-gpu/onnxruntime-gpu.
	@$(PY) -c 'import paddle' 2>/dev/null || $(PIP) $$(grep '^paddlepaddle' requirements-cpu.txt)
	@$(PY) -c 'import onnxruntime' 2>/dev/null || $(PIP) $$(grep '^onnxruntime' requirements-cpu.txt)
	$(PIP) -r requirements.txt
	@touch $@

# The test environment includes the optional Ray extra, so that CI runs the Ray tests (test_ray_infer, test_ray_serve).
$(VENV)/.installed-dev: $(VENV)/.installed $(VENV)/.installed-ray requirements-dev.txt
	$(PIP) -r requirements-dev.txt
	@touch $@

# Optional: infer.py --ray and serve.py --ray (Ray core + Serve; docs/how-to/ray.md).
$(VENV)/.installed-ray: $(VENV)/.installed requirements-ray.txt
	$(PIP) -r requirements-ray.txt
	@touch $@

# A real Label Studio for tests/serving/test_label_studio_server.py, in its own environment: its pins (Django,
# pydantic, numpy, ...) must not meet paddlenlp's. About 2.5 minutes and 1 GB the first time; then nothing.
LS_VENV ?= .venv-labelstudio
$(LS_VENV)/.installed: requirements-labelstudio.txt constraints-labelstudio.txt
	@test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints-labelstudio.txt \
	  -r requirements-labelstudio.txt
	@touch $@

$(VENV)/.installed-bench: $(VENV)/.installed requirements-bench.txt
	$(PIP) -r requirements-bench.txt
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev browser
install-ray: $(VENV)/.installed-ray
install-labelstudio: $(LS_VENV)/.installed

# The main job, offline: tiny random ERNIE -> P-tuning (LSTM soft prompt) -> eval -> predict
# -> export (static graph + ONNX, parity-checked) -> infer.py on onnxruntime.
demo: install
	$(PY) -m utils.tiny_ernie --output_dir $(DEMO_MODEL) --data_dir data/example --extra_text "$(DEMO_PROMPT)"
	$(PY) train.py --model_name_or_path $(DEMO_MODEL) --data_dir data/example --output_dir $(DEMO_OUT) \
	  --overwrite_output_dir --prompt "$(DEMO_PROMPT)" --max_seq_length 64 \
	  --learning_rate 1e-3 --ppt_learning_rate 3e-3 --num_train_epochs 20 --eval_steps 10 --logging_steps 10 \
	  --per_device_train_batch_size 8 --per_device_eval_batch_size 32 \
	  --do_train --do_eval --do_predict --do_export --seed 1000
	$(PY) infer.py --model_path_prefix $(DEMO_OUT)/export/model --data_dir data/example --device cpu \
	  --output_file $(DEMO_OUT)/infer_predictions.tsv

# The same for label sets: data/multilabel_example (--task_type multi-label) and
# data/hierarchical_example (--task_type hierarchical), thresholds searched on dev, infer.py on each export.
LABELS_MODEL := checkpoints/demo-tiny-ernie-labels
LABELS_PROMPTS := 这条评价提到的方面有 这句话描述的事件是
LABELS_FLAGS := --max_seq_length 64 --learning_rate 1e-3 --ppt_learning_rate 3e-3 --num_train_epochs 20 \
  --eval_steps 10 --logging_steps 10 --per_device_train_batch_size 8 --per_device_eval_batch_size 32 \
  --threshold_search global --do_train --do_eval --do_predict --do_export --seed 1000 --overwrite_output_dir
demo-label-sets: install
	$(PY) -m utils.tiny_ernie --output_dir $(LABELS_MODEL) --data_dir data/multilabel_example \
	  --data_dir data/hierarchical_example --extra_text "$(LABELS_PROMPTS)"
	$(PY) train.py --task_type multi-label --model_name_or_path $(LABELS_MODEL) --data_dir data/multilabel_example \
	  --output_dir checkpoints/demo-multilabel --prompt "$(word 1,$(LABELS_PROMPTS))" $(LABELS_FLAGS)
	$(PY) infer.py --model_path_prefix checkpoints/demo-multilabel/export --data_dir data/multilabel_example \
	  --device cpu --output_file checkpoints/demo-multilabel/infer_predictions.tsv
	$(PY) train.py --task_type hierarchical --model_name_or_path $(LABELS_MODEL) --data_dir data/hierarchical_example \
	  --output_dir checkpoints/demo-hierarchical --prompt "$(word 2,$(LABELS_PROMPTS))" $(LABELS_FLAGS)
	$(PY) infer.py --model_path_prefix checkpoints/demo-hierarchical/export --data_dir data/hierarchical_example \
	  --device cpu --output_file checkpoints/demo-hierarchical/infer_predictions.tsv

# Two workers (pytest-xdist), each taking whole files: a module's fixtures (its Ray cluster, its
# trained model) live in one worker. Tests hold no state across files and never depend on timing.
test: install-dev install-labelstudio
	PTUNING_LABEL_STUDIO_VENV=$(LS_VENV) $(PY) -m pytest -q -n 2 --dist loadfile tests

# Every command in README.md and docs/ run (or parse-checked) by tests/test_docs.py; part of `make test`.
docs-check: install-dev
	$(PY) -m pytest -q tests/test_docs.py

# Regenerate docs/reference/cli/*.md from the scripts' parsers (test_docs checks they are current).
docs-reference: install
	$(PY) tests/test_docs.py --write-reference

# A headless browser for tests/reporting/test_explain.py (the explanation page is rendered and screenshotted):
# chromium from the system's packages when none is installed (Debian/Ubuntu; the test skips, saying
# why, where there is none).
BROWSERS := chromium chromium-browser google-chrome google-chrome-stable
browser:
	@for b in $(BROWSERS); do command -v $$b >/dev/null 2>&1 && exit 0; done; \
	if command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  $$SUDO apt-get install -y --no-install-recommends chromium || \
	  { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium; } || \
	  echo "note: could not install chromium; tests/reporting/test_explain.py's rendering test will skip, saying why"; \
	else echo "note: no headless browser; install chromium for the explanation page's rendering test"; fi

# Speed/memory ratios on this machine (needs ../shared; about 50 minutes on 2 cores: bench.py, then
# attention fusion's fused vs unfused exports, which reuses bench.py's ERNIE-base). See BENCHMARKS.md.
bench: $(VENV)/.installed-bench
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/attention_fusion.py --texts 256 --rounds 5

# Only the attention-fusion table (issue 29; ~25 minutes: two ERNIE-base exports, then the rounds).
bench-fusion: $(VENV)/.installed-bench
	$(PY) benchmarks/attention_fusion.py --texts 256 --rounds 5

# infer.py --ray on a 2-node local Ray cluster vs local infer.py (no ../shared needed). See BENCHMARKS.md.
bench-ray: $(VENV)/.installed-ray
	$(PY) benchmarks/bench.py --only ray

# Pretraining overhead and distilled-student speed (needs ../shared; ~35 min on 2 cores). See BENCHMARKS.md.
bench-unlabeled: $(VENV)/.installed
	$(PY) benchmarks/unlabeled.py

# The knowledge-bearing proxy's quality table (needs ../shared; hours on 2 cores; cached, re-run to continue).
# See QUALITY.md.
quality: $(VENV)/.installed
	$(PY) benchmarks/proxy_quality.py

clean:
	rm -rf $(DEMO_OUT) $(DEMO_MODEL) $(LABELS_MODEL) checkpoints/demo-multilabel checkpoints/demo-hierarchical
