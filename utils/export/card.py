"""The model cards of exports, run directories and multiruns: the facts gathered from their files,
rendered by utils/reporting/card.py (one renderer; this module only knows where each fact lives)."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

from ..deploy.format import LABELS_FILE, PREPROCESS_FILE
from ..errors import UserError
from ..files import read_json
from ..model.spec import ModelSpec
from ..reporting.card import CardFacts, write_card
from ..rundir.names import ALL_RESULTS_FILE, CARD_FILE, SPEC_FILE
from ..rundir.record import read_run_record

logger = logging.getLogger(__name__)

SEARCH_RECORD_FILE = "search.json"  # search.py's note beside the run it chose (when there is one)


def _json_or_none(path: str) -> Optional[Any]:
    if not os.path.isfile(path):
        return None
    try:
        return read_json(path)
    except UserError as exc:  # a damaged side file costs the card a section, never the run or export
        logger.warning("model card: %s", exc)
        return None


def _beside(directory: str, name: str) -> Optional[Any]:
    """`name` in `directory` or, for a checkpoint-N, in the run directory around it."""
    for candidate in (directory, os.path.dirname(os.path.abspath(directory))):
        found = _json_or_none(os.path.join(candidate, name))
        if found is not None:
            return found
    return None


def card_name(directory: str) -> str:
    """The title: the directory's name; an `export` inside a run is `RUN/export`."""
    path = os.path.abspath(directory)
    name = os.path.basename(path)
    return f"{os.path.basename(os.path.dirname(path))}/{name}" if name == "export" else name


def spec_facts(spec: ModelSpec) -> Dict[str, Any]:
    """A spec as the card reads it: the manifest's spelling of the same facts."""
    return {**spec.to_dict(), **spec.decoder.describe(), "head": spec.head, "zero_shot": spec.zero_shot,
            "threshold_search": spec.threshold_search if spec.decoder.multi_label else None}


def write_export_card(directory: str, manifest: Dict[str, Any], name: Optional[str] = None) -> Optional[str]:
    """README.md of an export: the manifest, its labels' words, and its checkpoint's run's results and record.
    `name`: the card's title when `directory` is still the temporary one beside the target."""
    source = manifest.get("source_checkpoint")
    labels = _json_or_none(os.path.join(directory, LABELS_FILE)) or []
    preprocess = _json_or_none(os.path.join(directory, PREPROCESS_FILE)) or {}
    facts = CardFacts(name=name or card_name(directory), model={**manifest, "long_text": preprocess.get("long_text")},
                      results=(_beside(source, ALL_RESULTS_FILE) or {}) if source else {},
                      record=read_run_record(source) if source else None,
                      search=_beside(source, SEARCH_RECORD_FILE) if source else None,
                      export=manifest, label_words=[entry.get("word") for entry in labels if isinstance(entry, dict)])
    return write_card(directory, facts, CARD_FILE)


def write_run_card(output_dir: str, model_dir: str) -> Optional[str]:
    """README.md of a run directory: the model it trained (or evaluated: `model_dir`), its results, its record."""
    if not os.path.isfile(os.path.join(model_dir, SPEC_FILE)):
        return None  # nothing was trained or evaluated here (e.g. an export-only run)
    facts = CardFacts(name=card_name(output_dir), model=spec_facts(ModelSpec.load(model_dir)),
                      results=_json_or_none(os.path.join(output_dir, ALL_RESULTS_FILE)) or {},
                      record=read_run_record(output_dir), search=_beside(output_dir, SEARCH_RECORD_FILE))
    return write_card(output_dir, facts, CARD_FILE)


def write_multirun_card(output_dir: str, summary: Dict[str, Any]) -> Optional[str]:
    """README.md of a multirun directory: the first run's model, the mean of each metric over the runs as
    its results, and mean ± std beside them."""
    runs = [run for run in summary.get("runs") or [] if os.path.isfile(os.path.join(run["output_dir"], SPEC_FILE))]
    if not runs:
        return None
    means = {key: stats["mean"] for key, stats in (summary.get("metrics") or {}).items()}
    facts = CardFacts(name=card_name(output_dir), model=spec_facts(ModelSpec.load(runs[0]["output_dir"])),
                      results=means, record=read_run_record(runs[0]["output_dir"]), multirun=summary)
    return write_card(output_dir, facts, CARD_FILE)
