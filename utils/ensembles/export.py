"""The ensemble as an `ExportSource`: its graph, its input views and files, and the reference the
parity gate holds it to. The export itself is the one pipeline every export goes through
(utils/export/pipeline.py)."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import List, Optional

import paddle

from ..deploy.format import MEMBER_OUTPUT, OUTPUT_NAME
from ..deploy.preprocess import describe_template
from ..export.graph import ExportError
from ..export.parity import DEFAULT_TOLERANCE, Reference
from ..export.pipeline import ExportOptions, ExportSource, representation_output, write_export
from .graph import EnsembleModel, combine, load_models
from .plan import EnsemblePlan, Member


def export_ensemble(plan: EnsemblePlan, output_dir: str, examples: Optional[List[dict]] = None,
                    export_type: str = "paddle", export_fp16: bool = False, quantize: bool = False, opset: int = 13,
                    tolerance: float = DEFAULT_TOLERANCE, models=None, fuse_attention: str = "off") -> dict:
    """Write the ensemble export to `output_dir` (built beside it, renamed into place); return its manifest.
    `models`: the members already built (in plan order), else they are loaded here."""
    started = time.time()
    paddle.set_device("cpu")
    if models is None:
        models = load_models(plan)
    options = ExportOptions(export_type, export_fp16, quantize, opset, tolerance, str(fuse_attention))
    return write_export(ensemble_source(plan, models), output_dir, examples, options, started)


def ensemble_source(plan: EnsemblePlan, models) -> ExportSource:
    """What the ensemble's export is made of; `models`: the members' prompt models, in plan order."""
    first, members = plan.members[0], plan.members
    graph = EnsembleModel(models, plan.views, plan.decoder.activation, [m.spec.temperature for m in members],
                          representation=True)
    graph.eval()
    reference = Reference(
        models=models, decoder=plan.decoder, views=plan.views, decoders=[m.spec.decoder for m in members],
        names=[f"member {index} ({m.path})" for index, m in enumerate(members)],
        combine=lambda logits: combine([m.probabilities(own) for m, own in zip(members, logits)],
                                       plan.decoder.activation),
        probabilities=True, compared="ensemble probabilities, then each member's logits",
        description="each member's dynamic graph (unfolded prompt encoder) on its training template's batch",
        failure="the ensemble export does not reproduce its members")
    # Decoding is the plan's (the reference's decoder): the members' temperatures are in the graph.
    spec = dataclasses.replace(first.spec, threshold_search=plan.threshold_search, max_seq_length=plan.max_seq_length)
    labels = len(plan.labels)
    return ExportSource(
        name=f"an ensemble of {len(members)} members ({plan.num_views} view(s))", layer=graph, reference=reference,
        spec=spec, tokenizer=models[0].template.tokenizer, preprocess=describe_views(models, plan),
        template={"template": first.spec.template, "processed": models[0].template.prompt,
                  "members": [{"template": m.spec.template, "processed": model.template.prompt}
                              for m, model in zip(members, models)]},
        text_keys=sorted(models[0].template.example_keys),
        outputs=[{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", labels],
                  "meaning": "log of the mean softmax (multi-class) / logit of the mean sigmoid"},
                 {"name": MEMBER_OUTPUT, "dtype": "float32", "shape": [len(members), "batch", labels]},
                 representation_output(sum(model.plm.get_input_embeddings().weight.shape[1] for model in models))],
        views=plan.num_views,
        manifest={"method": "ensemble", "verbalizer": None, "head": None, "model_name_or_path": None,
                  "ensemble": {"combine": "mean of the members' probabilities", "views": plan.num_views,
                               "members": [member_summary(m, v) for m, v in zip(members, plan.views)]}})


def describe_views(models, plan: EnsemblePlan) -> dict:
    """preprocess.json: view 0 as a single export's (so its reader is unchanged), plus `views`
    when the members use more than one template or length."""
    configs = []
    for view in range(plan.num_views):
        index = plan.views.index(view)
        spec = plan.members[index].spec  # long texts: one view, every member's settings alike (plan.py)
        configs.append(describe_template(models[index].template, spec.max_seq_length, spec.long_text))
    config = dict(configs[0])
    shared = ("special_ids", "tokenizer", "pad_token_type_id", "truncation_side")
    for other in configs[1:]:
        for key in shared:
            if other.get(key) != config.get(key):
                raise ExportError(f"the members' tokenizers differ in {key}; an export has one tokenizer", key)
    if len(configs) > 1:
        config["max_seq_length"] = plan.max_seq_length
        config["views"] = [{"parts": c["parts"], "max_seq_length": c["max_seq_length"]} for c in configs]
    return config


def member_summary(member: Member, view: int) -> dict:
    """One member as the manifest's `ensemble.members` lists it."""
    spec = member.spec
    plm = spec.plm_config or {}
    return {"source_checkpoint": os.path.abspath(member.path), "view": view, "method": spec.method.value,
            "verbalizer": spec.verbalizer, "head": spec.head, "template": spec.template,
            "max_seq_length": spec.max_seq_length, "model_name_or_path": spec.model_name_or_path,
            "plm": {k: plm.get(k) for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
            "thresholds": list(spec.decoder.thresholds) if spec.decoder.thresholds else None}
