"""Why did the model predict that? Token attributions by integrated gradients, as JSON and HTML.

Integrated gradients (Sundararajan et al. 2017) on the input embeddings of the text's tokens,
w.r.t. the explained label's logit (the predicted one unless asked otherwise):

    attribution(token i) = (x_i - x'_i) . mean over the path of d logit / d x_i,
    path: x' + alpha (x - x'), alpha at the midpoints of `steps` equal intervals

The baseline x' replaces only the text's tokens by the [PAD] embedding; the soft prompt (after
its LSTM/MLP encoder: its output does not depend on the text), the hard prompt, [CLS], [SEP] and
[MASK] stay as they are, so the gradients flow through the whole prompt model exactly as in
training. Completeness: the attributions sum to logit(x) - logit(x') up to the Riemann error,
which `Explanation.completeness_gap` reports (a sanity check, as the issue asks).

A --long_text window model reads a long document as several windows and aggregates their
predictions: the document's probabilities are the aggregated ones (as infer.py's), and the text
explained is the window that gives the explained label its highest probability (the one that
weighs most in a mean or a max), named `window i of n` with the window's own logits.

The bad-case report ranks a labelled split's errors by confidence, most confident first, each
with its attribution view: the errors most worth reading. Rendering (`render_html`) is plain
HTML with inline styles: Chinese text is shown as is, each token shaded by its attribution.
"""
from __future__ import annotations

import html
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_STEPS = 32
TEXT_KEYS = ("text_a", "text_b")


@dataclass
class Explanation:
    """One text's attributions. `tokens`/`attributions` cover the text's tokens only (the prompt is
    fixed), in order; `field` says which text each token is from (text_a, text_b)."""

    text: Dict[str, str]
    label: str                    # the explained label
    predicted: str                # the model's best label
    confidence: float             # the model's probability of `predicted` (calibrated if it was)
    probabilities: Dict[str, float]
    tokens: List[str]
    fields: List[str]
    attributions: List[float]
    logit: float                  # the explained label's logit on the text
    baseline_logit: float         # ... on the baseline ([PAD] for every text token)
    steps: int
    gold: Optional[str] = None
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def completeness_gap(self) -> float:
        """|sum of attributions - (logit - baseline logit)|: near 0 when the integral is accurate."""
        return abs(float(np.sum(self.attributions)) - (self.logit - self.baseline_logit))

    def top_tokens(self, k: int = 3) -> List[str]:
        order = np.argsort(-np.asarray(self.attributions), kind="stable")[:k]
        return [self.tokens[i] for i in order]

    def to_dict(self) -> Dict:
        data = asdict(self)
        data["completeness_gap"] = self.completeness_gap
        data.pop("extra")
        data.update(self.extra)
        return data


def _embedding_layer(plm):
    base = getattr(plm, plm.base_model_prefix, plm)
    return base.embeddings.word_embeddings


def _text_positions(ids: List[int], soft: List[int], token_ids: Dict[str, List[int]]) -> List[tuple]:
    """`(position, field)` of each text token in the encoded input: each text's token ids (as
    truncated by the template: the longest prefix found) among the non-soft positions."""
    out, taken = [], set()
    for key, wanted in token_ids.items():
        best_start, best_len = None, 0
        for start in range(len(ids)):
            n = 0
            while (n < len(wanted) and start + n < len(ids) and soft[start + n] == 0 and start + n not in taken
                   and ids[start + n] == wanted[n]):
                n += 1
            if n > best_len:
                best_start, best_len = start, n
        if best_start is not None:
            for p in range(best_start, best_start + best_len):
                out.append((p, key))
                taken.add(p)
    return sorted(out)


class Explainer:
    """Integrated gradients for a prompt model (utils/modeling.PromptModel) and its spec."""

    def __init__(self, model, tokenizer, spec, steps: int = DEFAULT_STEPS, windows=None):
        """`windows`: a --long_text model's reading (utils/training/long_text.py `TrainingWindows`:
        `split(examples, what)` and `aggregate(logits, counts)`), else None."""
        self.model, self.tokenizer, self.spec, self.steps = model, tokenizer, spec, int(steps)
        self.decoder = spec.decoder
        self.windows = windows
        model.eval()

    def _encode(self, example: Dict[str, str]):
        import paddle
        from paddlenlp.prompt import PromptDataCollatorWithPadding

        template = self.model.template
        feature = template(dict(example))
        batch = PromptDataCollatorWithPadding(template.tokenizer, padding=True, return_tensors="np")([feature])
        inputs = {k: paddle.to_tensor(v) for k, v in batch.items() if k != "labels"}
        with paddle.no_grad():
            processed = template.process_batch(dict(inputs))
            if processed.get("inputs_embeds") is None:  # a template without soft tokens
                processed["inputs_embeds"] = _embedding_layer(self.model.plm)(inputs["input_ids"])
            if processed.get("attention_mask") is None:
                pad = (inputs["input_ids"] == self.tokenizer.pad_token_id).astype("float32") * -1e4
                processed["attention_mask"] = pad.unsqueeze([1, 2])
        return batch, processed

    def explain(self, example: Dict[str, str], label: Optional[str] = None, gold: Optional[str] = None) -> Explanation:
        """Attributions of `example`'s text tokens for `label` (default: the predicted label); a long
        document of a --long_text model: of its deciding window (module docstring)."""
        if self.windows is None:
            return self._explain_input(example, label, gold)
        inputs, counts, _ = self.windows.split([example], "the text explained")
        if counts[0] == 1:
            return self._explain_input(inputs[0], label, gold)
        window_logits = self._logits(inputs)  # one pass over the windows: each one's and the document's
        window_probs = self.decoder.probabilities(window_logits)
        probs = self.decoder.probabilities(self.windows.aggregate(window_logits, counts))[0]
        label = label or self.spec.labels[int(np.argmax(probs))]
        window = int(np.argmax(window_probs[:, self.spec.labels.index(label)]))
        explanation = self._explain_input(inputs[window], label, gold)
        explanation.text = {k: example[k] for k in TEXT_KEYS if example.get(k)}
        explanation.predicted = self.spec.labels[int(np.argmax(probs))]
        explanation.confidence = float(probs.max())
        explanation.probabilities = {lab: float(p) for lab, p in zip(self.spec.labels, probs)}
        explanation.extra.update(window=window + 1, windows=len(inputs), window_text=inputs[window]["text_a"],
                                 window_probabilities={lab: float(p) for lab, p in
                                                       zip(self.spec.labels, window_probs[window])})
        return explanation

    def _explain_input(self, example: Dict[str, str], label: Optional[str], gold: Optional[str]) -> Explanation:
        """Integrated gradients on one input the model reads."""
        import paddle

        batch, processed = self._encode(example)
        ids = batch["input_ids"][0].tolist()
        soft = batch["soft_token_ids"][0].tolist() if "soft_token_ids" in batch else [0] * len(ids)
        wanted = {k: self.tokenizer(example[k], add_special_tokens=False)["input_ids"]
                  for k in TEXT_KEYS if example.get(k)}
        positions = _text_positions(ids, soft, wanted)
        index = np.array([p for p, _ in positions], dtype=np.int64)
        x = processed["inputs_embeds"].detach()
        pad = _embedding_layer(self.model.plm)(paddle.to_tensor([[self.tokenizer.pad_token_id]])).detach()
        baseline = x.clone()
        if len(index):
            replace = np.zeros([1, x.shape[1], 1], dtype="float32")
            replace[0, index, 0] = 1.0
            replace = paddle.to_tensor(replace)
            baseline = x * (1 - replace) + pad * replace

        seq = int(x.shape[1])
        mask_positions = [i for i, (t, s) in enumerate(zip(ids, soft))
                          if t == self.tokenizer.mask_token_id and s == 0]

        def scores(embeds):
            n = int(embeds.shape[0])
            plm_inputs = {"inputs_embeds": embeds,
                          "attention_mask": paddle.tile(processed["attention_mask"], [n, 1, 1, 1])}
            for key in ("token_type_ids", "position_ids"):
                if processed.get(key) is not None:
                    plm_inputs[key] = paddle.tile(processed[key], [n, 1])
            flat = paddle.to_tensor([p + b * seq for b in range(n) for p in mask_positions], dtype="int64")
            return self.model.head.export_scores(self.model, plm_inputs, lambda: flat)

        with paddle.no_grad():
            both = scores(paddle.concat([x, baseline], axis=0)).numpy()
        logits, baseline_logits = both[0], both[1]
        probs = self.decoder.probabilities(logits[None])[0]
        predicted = self.spec.labels[int(np.argmax(probs))]
        label = label or predicted
        target = self.spec.labels.index(label)

        alphas = (np.arange(self.steps, dtype="float32") + 0.5) / self.steps
        total = np.zeros(x.shape[1:], dtype="float64")
        diff = (x - baseline)
        for start in range(0, self.steps, 16):  # at most 16 path points per pass (memory)
            a = paddle.to_tensor(alphas[start:start + 16]).reshape([-1, 1, 1])
            path = (baseline + a * diff).detach()
            path.stop_gradient = False
            out = scores(path)
            out[:, target].sum().backward()
            total += path.grad.numpy().astype("float64").sum(axis=0)
        attribution = (diff[0].numpy().astype("float64") * total / self.steps).sum(axis=-1)
        tokens = self._shown_tokens(example, positions, [ids[p] for p, _ in positions])
        return Explanation(text={k: example[k] for k in TEXT_KEYS if example.get(k)}, label=label,
                           predicted=predicted, confidence=float(probs.max()),
                           probabilities={lab: float(p) for lab, p in zip(self.spec.labels, probs)},
                           tokens=tokens,
                           fields=[f for _, f in positions], attributions=[float(attribution[p]) for p, _ in positions],
                           logit=float(logits[target]), baseline_logit=float(baseline_logits[target]),
                           steps=self.steps, gold=gold)

    def _shown_tokens(self, example: Dict[str, str], positions: List[tuple], ids: List[int]) -> List[str]:
        """The text as written for each token (so [UNK] shows its character), else the token."""
        tokens = self.tokenizer.convert_ids_to_tokens(ids)
        shown, seen = [], {}
        offsets = {}
        for key in {f for _, f in positions}:
            try:
                offsets[key] = self.tokenizer(example[key], add_special_tokens=False,
                                              return_offsets_mapping=True)["offset_mapping"]
            except (TypeError, KeyError, NotImplementedError):  # a tokenizer without offsets
                offsets[key] = None
        for (_, key), token in zip(positions, tokens):
            k = seen.get(key, 0)
            seen[key] = k + 1
            spans = offsets.get(key)
            piece = example[key][spans[k][0]:spans[k][1]].strip() if spans and k < len(spans) else ""
            shown.append(piece or (token[2:] if token.startswith("##") else token))
        return shown

    def probabilities(self, examples: Sequence[Dict[str, str]], batch_size: int = 32) -> np.ndarray:
        """The model's probabilities for `examples` (as train.py's evaluation computes them: a long
        document's windows aggregated)."""
        if self.windows is None:
            return self.decoder.probabilities(self._logits(examples, batch_size))
        inputs, counts, _ = self.windows.split(list(examples), "the texts ranked")
        return self.decoder.probabilities(self.windows.aggregate(self._logits(inputs, batch_size), counts))

    def _logits(self, examples: Sequence[Dict[str, str]], batch_size: int = 32) -> np.ndarray:
        import paddle
        from paddlenlp.prompt import PromptDataCollatorWithPadding

        template = self.model.template
        collate = PromptDataCollatorWithPadding(template.tokenizer, padding=True, return_tensors="np")
        out = []
        with paddle.no_grad():
            for start in range(0, len(examples), batch_size):
                batch = collate([template({k: e[k] for k in TEXT_KEYS if k in e})
                                 for e in examples[start:start + batch_size]])
                logits = self.model(**{k: paddle.to_tensor(v) for k, v in batch.items() if k != "labels"})
                out.append(logits.numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.spec.labels)))

    def explain_all(self, examples: Sequence[Dict[str, str]], gold: Optional[Sequence[str]] = None
                    ) -> List[Explanation]:
        return [self.explain(e, gold=None if gold is None else gold[i]) for i, e in enumerate(examples)]


def bad_cases(explainer: Explainer, examples: Sequence[dict], gold: Sequence[str], probs: np.ndarray,
              limit: int = 20) -> List[Explanation]:
    """The errors among `examples` (multi-class: best label != gold), most confident first, at most
    `limit`, each explained w.r.t. the predicted label (what pushed the model to its mistake)."""
    labels = explainer.spec.labels
    predicted = probs.argmax(axis=1)
    wrong = [i for i in range(len(examples)) if labels[predicted[i]] != gold[i]]
    wrong.sort(key=lambda i: -probs[i].max())
    out = []
    for i in wrong[:limit]:
        explanation = explainer.explain(examples[i], gold=gold[i])
        explanation.extra["index"] = i
        out.append(explanation)
    return out


# -- output files -------------------------------------------------------------------------------------


def _shade(value: float, scale: float) -> str:
    """Green for positive (towards the label), red for negative, alpha by |value| / scale."""
    alpha = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    rgb = "0,150,60" if value >= 0 else "210,40,40"
    return f"rgba({rgb},{alpha * 0.85:.3f})"


EMBEDDED_FONT = "TokenAttributionsCJK"


def embedded_font_css(text: str) -> str:
    """An @font-face with the bundled Noto Sans SC (utils/reporting/fonts.py) cut down to the page's own
    non-ASCII characters, as a data URL: the page draws Chinese on machines without a CJK font
    too and stays one self-contained file (a few KB per hundred characters). "" when the font or
    fontTools is missing (then the installed fonts draw what they can)."""
    import base64
    import io

    chars = sorted({c for c in text if ord(c) > 127 and not c.isspace()})
    if not chars:
        return ""
    try:
        import pylopdf_fonts_zh_cn
        from fontTools import subset
        from fontTools.ttLib import TTFont

        options = subset.Options()
        options.layout_features, options.hinting, options.desubroutinize = [], False, True
        font = TTFont(str(pylopdf_fonts_zh_cn.sans_path()))
        subsetter = subset.Subsetter(options)
        subsetter.populate(unicodes=[ord(c) for c in chars])
        subsetter.subset(font)
        data = io.BytesIO()
        font.save(data)
    except Exception as exc:  # an optional nicety: never worth failing the report for
        logger.debug("no embedded CJK font: %s", exc)
        return ""
    encoded = base64.b64encode(data.getvalue()).decode("ascii")
    return f"@font-face{{font-family:'{EMBEDDED_FONT}';src:url(data:font/otf;base64,{encoded}) format('opentype')}}"


PAGE_CSS = (".case{border-bottom:1px solid #ddd;padding:0.8em 0}.tok{padding:0.1em 0.05em;border-radius:3px;"
            "font-size:1.3em}.meta{color:#444;font-size:0.9em}.wrong{color:#b00}")


def page_head(title: str, page_text: str, css: str = "") -> str:
    """The start of a report page in this module's style, up to its <h1>: the embedded CJK font cut to
    `page_text`'s characters, the page's fonts and widths, PAGE_CSS and `css` (utils/audit/report.py's
    page shares it)."""
    return "\n".join(["<!DOCTYPE html>", '<html lang="zh"><head><meta charset="utf-8">',
                      f"<title>{html.escape(title)}</title>",
                      f"<style>{embedded_font_css(page_text)}"
                      f"body{{font-family:'Noto Sans CJK SC','Noto Sans SC','Microsoft YaHei','PingFang SC',"
                      f"'{EMBEDDED_FONT}',sans-serif;margin:2em;max-width:60em}}{PAGE_CSS}{css}</style></head><body>",
                      f"<h1>{html.escape(title)}</h1>"])


def render_html(explanations: Sequence[Explanation], title: str = "Token attributions") -> str:
    """One self-contained page: per text, its tokens shaded by attribution (hover: the number),
    the label explained, the prediction and confidence, the gold label if known."""
    page_text = title + "".join(e.label + e.predicted + (e.gold or "") + "".join(e.tokens) for e in explanations)
    parts = [page_head(title, page_text),
             "<p class='meta'>Integrated gradients on the text's token embeddings w.r.t. the explained label's "
             "logit: <span style='background:rgba(0,150,60,0.6)'>green</span> pushes towards it, "
             "<span style='background:rgba(210,40,40,0.6)'>red</span> away; hover a token for its value.</p>"]
    for n, e in enumerate(explanations, 1):
        scale = max((abs(a) for a in e.attributions), default=0.0)
        wrong = e.gold is not None and e.gold != e.predicted
        meta = (f"#{n} explained: <b>{html.escape(e.label)}</b> · predicted: {html.escape(e.predicted)} "
                f"({e.confidence:.3f})")
        if e.gold is not None:
            meta += f" · gold: <span class='{'wrong' if wrong else ''}'>{html.escape(e.gold)}</span>"
        if "window" in e.extra:  # a long document: the tokens shown are its deciding window's
            meta += f" · window {e.extra['window']} of {e.extra['windows']} (the logits are the window's)"
        meta += f" · logit {e.logit:.3f} vs baseline {e.baseline_logit:.3f}, Σ attributions " \
                f"{sum(e.attributions):.3f}"
        tokens, previous = [], None
        for token, where, value in zip(e.tokens, e.fields, e.attributions):
            if previous is not None and where != previous:
                tokens.append(" <b>|</b> ")
            previous = where
            tokens.append(f"<span class='tok' title='{value:+.4f}' data-attribution='{value:.6f}' "
                          f"style='background:{_shade(value, scale)}'>{html.escape(token)}</span>")
        parts.append(f"<div class='case'><div class='meta'>{meta}</div><div>{''.join(tokens)}</div></div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_explanations(directory: str, name: str, explanations: Sequence[Explanation], title: str) -> Dict[str, str]:
    """`{name}.json` (every number) and `{name}.html` in `directory`, atomically."""
    import os

    from ..files import write_text_atomic

    os.makedirs(directory, exist_ok=True)
    paths = {"json": os.path.join(directory, f"{name}.json"), "html": os.path.join(directory, f"{name}.html")}
    write_text_atomic(paths["json"], json.dumps([e.to_dict() for e in explanations], ensure_ascii=False, indent=1)
                      + "\n")
    write_text_atomic(paths["html"], render_html(explanations, title))
    return paths
