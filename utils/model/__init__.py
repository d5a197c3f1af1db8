"""What a model is and how it is assembled: the typed description (Paddle-free) and the Paddle model.

    spec.py         `ModelSpec` (ptuning_config.json): head kind, template, labels, lengths, PLM, decoding
    head_kinds.py   the kinds of head described without Paddle (what spec.py and the flag checks read)
    heads.py        each kind's Paddle implementation (verbalizer, loss, forward, export scores)
    prompt.py       templates: parsed without eval, built from --prompt
    assembly.py     PLM + template + head -> the prompt model; weights stored once, loaded strictly
    plm.py          loading the pretrained model and tokenizer (offline fail-fast)
    activations.py  the Decoder's activation as a Paddle op
    compat.py       the fixes to paddlenlp 2.8.1 on Paddle 3
    label_words.py  the label-word checker and candidate ranking
    zero_shot.py    --zero_shot's check that the PLM has its masked-LM head
"""
