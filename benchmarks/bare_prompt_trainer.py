"""Baseline for the train.py overhead benchmark: the bare paddlenlp PromptTrainer loop.

The same model, template, verbalizer, data and Trainer settings as train.py, built directly from
paddlenlp (plus the one Paddle 3 fix without which the soft-prompt encoder crashes), no tool code
around it. Prints the Trainer's train_samples_per_second as JSON.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import paddle  # noqa: E402
from paddlenlp.datasets import MapDataset  # noqa: E402
from paddlenlp.prompt import (  # noqa: E402
    AutoTemplate,
    PromptModelForSequenceClassification,
    PromptTrainer,
    PromptTuningArguments,
    SoftVerbalizer,
)
from paddlenlp.transformers import AutoModelForMaskedLM, AutoTokenizer  # noqa: E402

from utils.model import compat  # noqa: E402  (the SoftTemplate.process_batch fix only)

parser = argparse.ArgumentParser()
parser.add_argument("--model_name_or_path", required=True)
parser.add_argument("--data_dir", required=True)
parser.add_argument("--output_dir", required=True)
parser.add_argument("--prompt", required=True)
parser.add_argument("--max_steps", type=int, default=8)
parser.add_argument("--batch_size", type=int, default=8)
parser.add_argument("--max_seq_length", type=int, default=128)
parser.add_argument("--seed", type=int, default=42)
args = parser.parse_args()
compat.apply()
paddle.set_device("cpu")

model = AutoModelForMaskedLM.from_pretrained(args.model_name_or_path)
tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
prompt = [{"soft": args.prompt, "encoder": "lstm", "hidden_size": 200}, {"text": "text_a"}, {"mask": None}]
template = AutoTemplate.create_from(prompt, tokenizer, args.max_seq_length, model=model)
label_words = {}
with open(os.path.join(args.data_dir, "label.txt"), encoding="utf-8") as fp:
    for line in fp:
        name, word = line.strip().split("==")
        label_words[name] = [word]
verbalizer = SoftVerbalizer(label_words, tokenizer, model)
examples = []
with open(os.path.join(args.data_dir, "train.txt"), encoding="utf-8") as fp:
    for line in fp:
        text, label = line.rstrip("\n").split("\t")
        examples.append({"text_a": text, "labels": verbalizer.labels_to_ids[label]})
training_args = PromptTuningArguments(
    output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
    learning_rate=3e-5, ppt_learning_rate=3e-4, max_seq_length=args.max_seq_length, report_to=["none"],
    save_steps=10**9, logging_steps=1, seed=args.seed, device="cpu", disable_tqdm=True)
trainer = PromptTrainer(model=PromptModelForSequenceClassification(model, template, verbalizer),
                        tokenizer=tokenizer, args=training_args, criterion=paddle.nn.CrossEntropyLoss(),
                        train_dataset=MapDataset(examples))
metrics = trainer.train().metrics
print(json.dumps({"train_samples_per_second": metrics["train_samples_per_second"],
                  "train_runtime": metrics["train_runtime"]}))
