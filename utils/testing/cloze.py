"""A tiny ERNIE that knows the label words: its MLM head trained on a cloze corpus (texts followed by
the prompt and their label word, the word masked). How tests and demos get a "pretrained" model
offline for the zero-shot baseline (utils/model/zero_shot.py); seconds on a CPU.
"""
from __future__ import annotations

import os
import random
from typing import Sequence, Tuple


def pretrain_cloze_mlm(model_dir: str, output_dir: str, examples: Sequence[Tuple[str, str]], prompt: str,
                       steps: int = 300, batch_size: int = 32, learning_rate: float = 2e-3, seed: int = 0,
                       mask_rate: float = 0.0) -> str:
    """Train `model_dir`'s ErnieForMaskedLM on `text + prompt + word` sentences ((text, word) pairs):
    the word's tokens are always masked (the cloze), other tokens at `mask_rate` (ordinary MLM).
    Writes the model and its tokenizer to `output_dir`; for tests and demos, seconds on a CPU."""
    import numpy as np
    import paddle
    from paddlenlp.transformers import ErnieForMaskedLM, ErnieTokenizer

    paddle.seed(seed)
    rng = random.Random(seed)
    tokenizer = ErnieTokenizer.from_pretrained(model_dir)
    model = ErnieForMaskedLM.from_pretrained(model_dir)
    model.train()
    encoded = []
    for text, word in examples:
        head = tokenizer(text + prompt, add_special_tokens=False)["input_ids"]
        tail = tokenizer(word, add_special_tokens=False)["input_ids"]
        ids = [tokenizer.cls_token_id] + head + tail + [tokenizer.sep_token_id]
        encoded.append((ids, set(range(1 + len(head), 1 + len(head) + len(tail)))))
    optimizer = paddle.optimizer.AdamW(learning_rate=learning_rate, parameters=model.parameters())
    loss_fn = paddle.nn.CrossEntropyLoss(ignore_index=-100)
    for step in range(steps):
        batch = rng.sample(encoded, min(batch_size, len(encoded)))
        length = max(len(ids) for ids, _ in batch)
        inputs = np.full((len(batch), length), tokenizer.pad_token_id, dtype="int64")
        labels = np.full((len(batch), length), -100, dtype="int64")
        for row, (ids, cloze) in enumerate(batch):
            for j, token in enumerate(ids):
                inputs[row, j] = token
                special = j == 0 or j == len(ids) - 1
                if j in cloze or (not special and rng.random() < mask_rate):
                    labels[row, j] = token
                    inputs[row, j] = tokenizer.mask_token_id
        attention = (inputs == tokenizer.pad_token_id).astype("float32")[:, None, None, :] * -1e4
        flat = np.flatnonzero(labels.reshape(-1) != -100)  # the MLM head runs on the masked positions only
        logits = model(input_ids=paddle.to_tensor(inputs), attention_mask=paddle.to_tensor(attention),
                       masked_positions=paddle.to_tensor(flat))
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        loss = loss_fn(logits.reshape([-1, logits.shape[-1]]), paddle.to_tensor(labels.reshape(-1)[flat]))
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        if os.environ.get("PTUNING_CLOZE_DEBUG") and step % 25 == 0:
            print("cloze step", step, float(loss))
    model.eval()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
