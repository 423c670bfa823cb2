"""Seed 003's three evaluation modes of a foveated VLM (`model.projector.query_from_lm`), `tbi eval --mode`.

Notation: P = the prompt, F = the tower's patch features, proj(F) the coarse tokens (no query), proj(F, q) the
fine tokens for query q, h(S)_i the LM's final normed hidden state at position i of sequence S, y_t the t-th
generated token (greedy: y_t = argmax of the LM's logits at the last position).

| mode | image tokens used to predict y_t | query |
|---|---|---|
| `coarse` | proj(F) | none: the fine pass is removed (seed 003 A6, "coarse only") |
| `coarse_fine` | proj(F, q) | q = h([P with proj(F)])_i at the last instruction token i, fixed for the whole answer (the training-time two-pass forward; the default `VLM.generate`) |
| `autoregressive` | proj(F, q_t) | q_1 as `coarse_fine`; q_t = h([P with proj(F)] + y_1..y_{t-1}) at y_{t-1}, t > 1 |

So `autoregressive` re-aims the fovea at every step, from the LM's state over the coarse sequence and the
answer so far: its first token equals `coarse_fine`'s, later ones may differ. The fine tokens change at every
step, so no KV cache is reused: each step runs the LM twice over the whole sequence (query, then logits);
a T-token answer costs O(T * (L + T)^2) attention, fine for evaluation on small models.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tbi_train.errors import TrainError

__all__ = ["EVAL_MODES", "check_mode", "evaluate_modes", "generate_in_mode"]

EVAL_MODES = ("coarse", "coarse_fine", "autoregressive")
"""Seed 003 section "3-mode eval": coarse only, coarse + fine, autoregressive (see the module docstring)."""


def check_mode(vlm, mode: str) -> None:
    """Raise TrainError unless `mode` is one of EVAL_MODES and `vlm` is a foveated (query-from-LM) model."""
    if mode not in EVAL_MODES:
        raise TrainError(f"unknown evaluation mode {mode!r}; use one of {', '.join(EVAL_MODES)}.")
    config = getattr(vlm, "config", None)
    projector = getattr(config, "projector", None)
    if not getattr(projector, "query_from_lm", False):
        name = getattr(projector, "name", type(vlm).__name__)
        raise TrainError(
            f"--mode {mode} needs a foveated model (model.projector.query_from_lm=true with a projector "
            f"taking query=, e.g. foveated-query); this model's projector is {name} without a fine pass. "
            "Evaluate it without --mode."
        )
    if getattr(vlm, "pyramid_drop", None) is not None and mode != "coarse_fine":
        raise TrainError(
            f"--mode {mode} is not defined with model.lm.pyramid_drop; evaluate with --mode coarse_fine."
        )


@torch.no_grad()
def generate_in_mode(
    vlm,
    mode: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None,
    **options,
) -> torch.Tensor:
    """New token ids [B, new] of left-padded prompts `input_ids` [B, L] under `mode` (greedy)."""
    check_mode(vlm, mode)
    if mode == "coarse_fine":
        return vlm.generate(input_ids, attention_mask, pixel_values, None, **options)
    embeds, image, n_slots = vlm._embed_text(input_ids, pixel_values, None)  # [B, L, D], [B, L]
    if n_slots is None:  # text only: nothing to foveate, every mode is the plain LM
        return vlm.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **options)
    features = vlm.vision(pixel_values.to(embeds.dtype))  # [N_img, P, C] (or S of them)
    coarse = _splice(embeds, image, vlm._project(features))  # [B, L, D]
    if mode == "coarse":
        return vlm.lm.generate(inputs_embeds=coarse, attention_mask=attention_mask, **options)
    if options.get("do_sample") or (options.get("num_beams") or 1) > 1:
        raise TrainError("--mode autoregressive decodes greedily only; use do_sample=False, num_beams=1.")
    return _autoregressive(vlm, input_ids, attention_mask, embeds, coarse, image, features, options)


def _autoregressive(vlm, input_ids, attention_mask, embeds, coarse, image, features, options) -> torch.Tensor:
    """Greedy decoding with the fine query recomputed after every generated token (module docstring)."""
    eos = options.get("eos_token_id", vlm.tokenizer.eos_token_id)
    pad = options.get("pad_token_id", vlm.tokenizer.pad_token_id)
    max_new = int(options.get("max_new_tokens", 512))
    batch = input_ids.shape[0]
    rows = torch.arange(batch, device=input_ids.device)
    m = vlm.tokens_per_image
    owner = image.nonzero()[::m, 0]  # [N_img] batch row of each image
    index = vlm.instruction_index(input_ids, attention_mask, image)  # [B] q_1's position
    done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    new: list[torch.Tensor] = []
    answer = embeds[:, :0]  # [B, t-1, D] embeddings of y_1..y_{t-1}
    mask = attention_mask
    for _ in range(max_new):
        position = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L + t - 1] left padding as generate
        query_seq = torch.cat([coarse, answer], dim=1)  # [B, L + t - 1, D]
        hidden = vlm.lm(
            inputs_embeds=query_seq, attention_mask=mask, position_ids=position,
            output_hidden_states=True, use_cache=False, logits_to_keep=1,
        ).hidden_states[-1]  # [B, L + t - 1, D] after the final norm  # fmt: skip
        at = index if not new else torch.full_like(index, hidden.shape[1] - 1)  # [B]
        query = hidden[rows, at]  # [B, D]
        fine = _splice(embeds, image, vlm._project(features, query[owner]))  # [B, L, D]
        logits = vlm.lm(
            inputs_embeds=torch.cat([fine, answer], dim=1), attention_mask=mask, position_ids=position,
            use_cache=False, logits_to_keep=1,
        ).logits[:, -1]  # [B, V]  # fmt: skip
        token = logits.argmax(dim=-1)  # [B]
        token = torch.where(done, torch.full_like(token, pad), token)
        new.append(token)
        done |= token == eos
        if bool(done.all()):
            break
        answer = torch.cat([answer, vlm.lm.get_input_embeddings()(token).unsqueeze(1)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(new, dim=1)  # [B, new]


def _splice(embeds: torch.Tensor, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """embeds [B, L, D] with the image positions replaced by tokens [N_img, M, D] (as `VLM.embed`)."""
    from tbi_train.model.vlm import _splice as splice

    return splice(embeds, image, tokens)


def evaluate_modes(
    model_dir: str | Path,
    benchmarks: dict[str, str | Path],
    out: str | Path,
    modes: tuple[str, ...] = EVAL_MODES,
    limit: int | None = None,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    image_root: str | Path | None = None,
    compat: str = "official",
    compile: bool = False,
) -> Path:
    """`tbi eval --mode ... [--compile]`: answer and score each benchmark once per mode with one loaded model.

    Writes `out/<mode>/<name>.predictions.jsonl` and `out/<mode>/scores.json` (as `evaluate_benchmarks`), and
    `out/modes.json` = {mode: {benchmark: score entry}}; returns `out/modes.json`. Without `modes` (empty) the
    model's own generation is used once, under `out/default/` (for `--compile` alone).
    """
    import json
    import resource
    import time

    from tbi_evalbench import load_benchmark, score_metric
    from tbi_train.eval.generate import generate
    from tbi_train.run.evaluate import _Question, load_any_vlm

    out = Path(out)
    vlm = load_any_vlm(model_dir)
    for mode in modes:
        check_mode(vlm, mode)
    if compile:
        from tbi_train.model.compile import compile_vlm

        compile_vlm(vlm)
    questions_of = {}
    for name, path in benchmarks.items():
        loader, _, language = name.partition(":")
        root = image_root if image_root is not None else Path(path).parent
        samples = load_benchmark(
            loader, path, image_root=root, **({"language": language} if language else {})
        )
        samples = samples[: limit or None]
        prompts = [
            _Question(s, "Describe the image." if s.language == "en" else "이미지를 설명하세요.")
            for s in samples
        ]
        questions_of[name] = (samples, prompts)
    summary: dict[str, dict] = {}
    for mode in modes or (None,):
        folder = out / (mode or "default")
        folder.mkdir(parents=True, exist_ok=True)
        scores = {}
        for name, (samples, questions) in questions_of.items():
            started = time.perf_counter()
            answers = generate(
                vlm, questions, max_new_tokens=max_new_tokens, batch_size=batch_size, mode=mode
            )
            seconds = time.perf_counter() - started
            refs = [{"answers": s.answers, "answer": s.answers[0] if s.answers else "", "choices": s.choices,
                     "category": s.category, **s.meta} for s in samples]  # fmt: skip
            result = score_metric(samples[0].metric, [s.id for s in samples], answers, refs, compat=compat)
            scores[name] = {
                "score": result.score, "metric": result.metric, "compat": result.compat, "mode": mode,
                "n": len(samples), "seconds_per_sample": seconds / len(samples),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }  # fmt: skip
            rows = [json.dumps({"id": s.id, "prediction": a, "answers": s.answers}, ensure_ascii=False)
                    for s, a in zip(samples, answers)]  # fmt: skip
            _write(folder / f"{name}.predictions.jsonl", "".join(r + "\n" for r in rows))
        _write(folder / "scores.json", json.dumps(scores, indent=2, ensure_ascii=False) + "\n")
        summary[mode or "default"] = scores
    target = out / "modes.json"
    _write(target, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return target


def _write(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a crash leaves no half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
