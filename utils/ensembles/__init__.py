"""Ensembles (模型融合): N trained runs as one export whose graph averages their probabilities.

    python ensemble.py --members OUT/runs/split0_seed42 OUT/runs/split1_seed42 ... --output_dir ENS \
        --data_dir DATA --do_eval --do_predict

`ENS/export` is an ordinary export directory: infer.py, the Python API, the service, Ray and
distillation (`train.py --teacher`) load it like any other. Its one graph runs every member (each
with its prompt encoder folded, as in a single export) on the same texts and outputs

    logits          log of the members' mean softmax (multi-class), or the logit of their mean
                    sigmoid (multi-label, hierarchical): the usual decoding turns it back into
                    exactly the mean probabilities, so nothing downstream knows it is an ensemble
    member_logits   [members, batch, labels]: each member's own logits (parity per member, and
                    the members' metrics beside the ensemble's from one pass)

Members must agree on what a prediction is: label names (hence order), task type, text layout
(single texts or pairs) and vocabulary (one tokenizer per export). Anything else may differ:
prompts, `--method`, verbalizers, lengths, PLM sizes. Members that read texts through the same
template and length share one set of inputs; each other template gets its own (a *view*, see
utils/deploy/preprocess.py), so a PET-style ensemble of several prompts is one graph too.

Members that read long texts (`--long_text`) must cut a document alike (the same reading, prompt and
length: one view); the graph then averages them window by window and the export aggregates each
document's windows as every member does (`member_logits` too, member by member).

Thresholds of label-set ensembles: `--threshold T`, `--threshold_search` on dev (the ensemble's
probabilities), else each label's mean of the members' thresholds.

The parity gate (the one every export passes, utils/export/parity.py) runs each member's unfolded
dynamic graph on its own training template's batch; the mean of their probabilities must match
Paddle Inference and onnxruntime on the ensemble graph (max |Δp| <= tolerance, every argmax /
label set equal), and each member's logits in the graph its own dynamic graph's. Nothing is
published otherwise. The export decodes as the ensemble does: the members' temperatures are in
the graph, so its manifest records the plan's thresholds, temperature 1 and no reject option.

    plan.py       the members, checked against each other from their files alone; views and decoding
    graph.py      the averaging graph (`EnsembleModel`) and its numpy twin `combine`
    export.py     the ensemble as an `ExportSource` for the one export pipeline and parity gate (utils/export/)
    evaluate.py   the export's metrics beside each member's, threshold search on dev
    run.py        what ensemble.py runs
"""
