"""Tokenise conversations, expand `<image>` into image-pad tokens, mask labels, and batch."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tbi_train.data.bad import BadSampleReport
from tbi_train.data.errors import DataError
from tbi_train.data.sample import IMAGE_PLACEHOLDER, Sample

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
IMAGE_PAD_TOKEN = "<|image_pad|>"
PLAIN_USER = "### User:\n"
PLAIN_ASSISTANT = "### Assistant:\n"
_CHAT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


@dataclass(frozen=True)
class PackedImage:
    """One image at native resolution, as an image transform may return it (Qwen2.5-VL).

    The Collator concatenates `pixel_values` of a batch's images (they differ in length) and stacks their
    `grid_thw` into `image_grid_thw` [N_img, 3]; the image's `<image>` expands to `tokens` pad tokens.
    """

    pixel_values: torch.Tensor
    """Packed patches [t * h * w, 3 * t_p * p * p] in the model's order."""
    grid_thw: tuple[int, int, int]
    """Grid (t, h, w) in patches."""
    tokens: int
    """LM tokens of this image: t * h * w / merge_size² (Qwen2.5-VL merges 2 x 2 patches)."""


@dataclass
class Encoded:
    """One tokenised sample: ids, labels (-100 = no loss), which positions are image tokens, tokens per media."""

    input_ids: list[int]
    labels: list[int]
    image_mask: list[bool]
    media_tokens: list[int]

    @property
    def supervised(self) -> int:
        """Number of positions that carry loss."""
        return sum(label != IGNORE_INDEX for label in self.labels)


class Collator:
    """Batch `Sample`s for a VLM whose projector tokens replace image-pad tokens in the text.

    Text: the tokenizer's chat template when it has one (roles user/assistant/system), else a plain
    template (`### User:\\n{q}\\n### Assistant:\\n{a}<eos>\\n`). Each `<image>` placeholder becomes
    `tokens_for(frames)` copies of the image-pad token, where frames is 1 for an image and N for a
    video or a replicated image; `tokens_per_image` is an int (tokens per frame, so a video of N
    frames gets N * tokens_per_image) or a callable frames -> tokens (e.g. a projector that pools
    over time: `lambda t: proj.num_output_tokens(grid=(h, w), num_frames=t)`).

    Labels: `loss_on="answers"` keeps loss on assistant replies (with the template's end-of-turn
    tokens) and masks prompts, system text and image tokens; `"all_text"` masks only image tokens
    (seed 003 stage 1). Padding is on the right and masked in labels and attention.

    Batch keys: input_ids [B, L], attention_mask [B, L], labels [B, L], pixel_values [N_img, 3, H, W],
    image_token_mask [B, L] (bool), sample_ids (list[str]), media_frames [N_media] (frames per
    placeholder, in order; they sum to N_img), media_sample [N_media] (batch row of each placeholder).

    Model-specific inputs come from the image transform: a `prepare_sample(sample)` method, when it has
    one, rewrites each sample first (InternVL tiles, Qwen2.5-VL vision markers); a transform with
    `packed = True` returns `PackedImage`s, whose patches are concatenated (pixel_values [sum P_i, D_patch]),
    whose grids form `image_grid_thw` [N_img, 3] and whose `tokens` replace `tokens_per_image`. A transform
    with an `image_token` attribute supplies the image-pad token when `image_token` is left at its default.

    A sample that cannot be used here (longer than `max_length` through its image tokens, or left
    with no supervised token) is dropped from its batch and counted in `bad_report`; run
    `preflight_check` first so this never happens during training.
    """

    def __init__(
        self,
        tokenizer,
        image_transform: Callable,
        tokens_per_image: int | Callable[[int], int],
        loss_on: str = "answers",
        *,
        max_length: int | None = None,
        image_token: str = IMAGE_PAD_TOKEN,
        use_chat_template: bool | None = None,
    ):
        if loss_on not in ("answers", "all_text"):
            raise DataError(f"loss_on={loss_on!r}: use 'answers' (answer-only loss) or 'all_text'.")
        if isinstance(tokens_per_image, int) and tokens_per_image < 1:
            raise DataError(f"tokens_per_image={tokens_per_image}: must be >= 1.")
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        self.tokens_per_image = tokens_per_image
        self.loss_on = loss_on
        self.max_length = max_length
        own_token = getattr(image_transform, "image_token", None)
        if own_token is not None and image_token not in (IMAGE_PAD_TOKEN, own_token):
            raise DataError(
                f"image_token={image_token!r} but the image transform's model marks images with {own_token!r}; "
                f"set model.tokenizer.image_pad_token={own_token!r}."
            )
        image_token = own_token or image_token
        self.image_token = image_token
        self.packed = bool(getattr(image_transform, "packed", False))
        self.image_token_id = _single_token_id(tokenizer, image_token)
        self.use_chat_template = (
            bool(getattr(tokenizer, "chat_template", None))
            if use_chat_template is None
            else use_chat_template
        )
        if self.use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise DataError(
                "use_chat_template=True but the tokenizer has no chat_template; set one or pass False."
            )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = pad if pad is not None else 0
        self.bad_report = BadSampleReport("collator")

    def tokens_for(self, frames: int) -> int:
        """Image-pad tokens standing for one placeholder with `frames` frames."""
        if callable(self.tokens_per_image):
            return int(self.tokens_per_image(frames))
        return self.tokens_per_image * frames

    def prepare(self, sample: Sample) -> Sample:
        """The sample as the model takes it: the image transform's `prepare_sample`, if any (idempotent)."""
        hook = getattr(self.image_transform, "prepare_sample", None)
        return hook(sample) if hook is not None else sample

    def transform_images(self, images: Sequence) -> list:
        """Each image through the image transform (a replicated frame, one PIL object, only once)."""
        done: dict[int, object] = {}
        out = []
        for img in images:
            if id(img) not in done:
                done[id(img)] = self.image_transform(img)
            out.append(done[id(img)])
        return out

    def media_tokens(self, pixels: Sequence, media_frames: Sequence[int]) -> list[int] | None:
        """Pad tokens per placeholder from packed images' own token counts; None for fixed-size images."""
        if not self.packed:
            return None
        counts, start = [], 0
        for n in media_frames:
            counts.append(sum(p.tokens for p in pixels[start : start + n]))
            start += n
        return counts

    def pixel_inputs(self, pixels: Sequence) -> dict[str, torch.Tensor]:
        """pixel_values [N_img, 3, H, W] stacked, or (packed) [sum P_i, D_patch] concatenated + image_grid_thw [N_img, 3]."""
        if self.packed:
            if not pixels:
                return {
                    "pixel_values": torch.zeros((0, 0)),
                    "image_grid_thw": torch.zeros((0, 3), dtype=torch.long),
                }
            return {
                "pixel_values": torch.cat([p.pixel_values for p in pixels]),  # [sum P_i, D_patch]
                "image_grid_thw": torch.tensor([p.grid_thw for p in pixels], dtype=torch.long),  # [N_img, 3]
            }
        if pixels:
            return {"pixel_values": torch.stack(list(pixels))}  # [N_img, 3, H, W]
        size = getattr(self.image_transform, "size", 0)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return {"pixel_values": torch.zeros((0, 3, h, w))}

    def encode(
        self,
        conversations: Sequence[dict[str, str]],
        media_frames: Sequence[int],
        sample_id: str = "?",
        media_tokens: Sequence[int] | None = None,
    ) -> Encoded:
        """Tokenise one conversation with labels; raises DataError when it cannot be trained on.

        `media_tokens` (pad tokens per placeholder) overrides `tokens_for(frames)` (native-resolution images).
        """
        segments = self._segments(list(conversations))
        encoded = self._tokenise(segments, media_frames, sample_id, media_tokens)
        if self.max_length is not None and len(encoded.input_ids) > self.max_length:
            if any(encoded.image_mask[self.max_length :]):
                raise DataError(
                    f"sample {sample_id}: {len(encoded.input_ids)} tokens and image tokens past max_length="
                    f"{self.max_length}; raise max_length, use fewer tokens per image, or shorten the text."
                )
            cut = self.max_length
            encoded = Encoded(
                encoded.input_ids[:cut], encoded.labels[:cut], encoded.image_mask[:cut], encoded.media_tokens
            )
        return encoded

    def encode_prompt(
        self,
        conversations: Sequence[dict[str, str]],
        media_frames: Sequence[int],
        media_tokens: Sequence[int] | None = None,
    ) -> Encoded:
        """Token ids for generation: the conversation without its last reply, ending in the assistant prompt."""
        turns = list(conversations)
        if turns and turns[-1]["from"] == "gpt":
            turns = turns[:-1]
        if self.use_chat_template:
            text = self._render(turns, generation_prompt=True)
        else:
            text = "".join(s for s, _ in self._plain_segments(turns)) + PLAIN_ASSISTANT
        encoded = self._tokenise([(text, False)], media_frames, "prompt", media_tokens)
        return Encoded(
            encoded.input_ids,
            [IGNORE_INDEX] * len(encoded.input_ids),
            encoded.image_mask,
            encoded.media_tokens,
        )

    def __call__(self, samples: Sequence[Sample]) -> dict[str, object]:
        rows: list[tuple[Sample, Encoded, list[int], list]] = []
        for sample in samples:
            self.bad_report.total += 1
            sample = self.prepare(sample)
            frames = list(sample.meta.get("media_frames", [1] * len(sample.images)))
            try:
                if sum(frames) != len(sample.images):
                    raise DataError(
                        f"sample {sample.id}: {len(sample.images)} images for media_frames={frames}."
                    )
                # Native-resolution images decide their own token counts, so they are transformed first.
                pixels = self.transform_images(sample.images) if self.packed else None
                media = self.media_tokens(pixels, frames) if self.packed else None
                enc = self.encode(sample.conversations, frames, sample.id, media)
                if enc.supervised == 0:
                    raise DataError(f"sample {sample.id}: no supervised tokens")
            except DataError as exc:
                self.bad_report.add(sample.id, "collate", str(exc))
                logger.warning("dropping sample from batch: %s", exc)
                continue
            rows.append((sample, enc, frames, pixels))
        if not rows:
            raise DataError(
                f"every sample of a batch was unusable:\n{self.bad_report.summary()}\nrun preflight_check first."
            )
        length = max(len(enc.input_ids) for _, enc, _, _ in rows)
        batch = len(rows)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)  # [B, L]
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)  # [B, L]
        attention = torch.zeros((batch, length), dtype=torch.long)  # [B, L]
        image_mask = torch.zeros((batch, length), dtype=torch.bool)  # [B, L]
        pixels, media_frames, media_sample = [], [], []
        for b, (sample, enc, frames, done) in enumerate(rows):
            n = len(enc.input_ids)
            input_ids[b, :n] = torch.tensor(enc.input_ids)
            labels[b, :n] = torch.tensor(enc.labels)
            attention[b, :n] = 1
            image_mask[b, :n] = torch.tensor(enc.image_mask)
            pixels.extend(done if done is not None else self.transform_images(sample.images))
            media_frames.extend(frames)
            media_sample.extend([b] * len(frames))
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            **self.pixel_inputs(pixels),
            "image_token_mask": image_mask,
            "sample_ids": [s.id for s, _, _, _ in rows],
            "media_frames": torch.tensor(media_frames, dtype=torch.long),
            "media_sample": torch.tensor(media_sample, dtype=torch.long),
        }

    def _render(self, turns: list[dict[str, str]], generation_prompt: bool) -> str:
        messages = [{"role": _CHAT_ROLES[t["from"]], "content": t["value"]} for t in turns]
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except (
            Exception
        ) as exc:  # jinja raises its own types (TemplateError, raise_exception) for refused turns
            roles = [m["role"] for m in messages]
            raise DataError(
                f"the chat template refused turns {roles}: {exc}; fix the conversation or pass use_chat_template=False."
            ) from exc

    def _segments(self, turns: list[dict[str, str]]) -> list[tuple[str, bool]]:
        """(text, is_reply) pieces whose concatenation is the rendered conversation."""
        if not self.use_chat_template:
            return self._plain_segments(turns)
        full = self._render(turns, generation_prompt=False)
        eos = self.tokenizer.eos_token or ""
        segments, cursor = [], 0
        for i, turn in enumerate(turns):
            if turn["from"] != "gpt":
                continue
            prompt = self._render(turns[:i], generation_prompt=True) if i else ""
            upto = self._render(turns[: i + 1], generation_prompt=False)
            if full.startswith(upto) and upto.startswith(prompt) and len(prompt) >= cursor:
                start, end = len(prompt), len(upto)
            else:
                # Templates that rewrite earlier turns (e.g. dropping reasoning) break the prefix
                # property: supervise the reply text itself plus the EOS that follows it.
                start = full.find(turn["value"], cursor)
                if start < 0:
                    raise DataError(
                        f"the chat template drops reply {i} ({turn['value'][:40]!r}); use use_chat_template=False."
                    )
                end = start + len(turn["value"])
                if eos and full.startswith(eos, end):
                    end += len(eos)
            segments += [(full[cursor:start], False), (full[start:end], True)]
            cursor = end
        segments.append((full[cursor:], False))
        return segments

    def _plain_segments(self, turns: list[dict[str, str]]) -> list[tuple[str, bool]]:
        bos = self.tokenizer.bos_token or ""
        eos = self.tokenizer.eos_token or ""
        segments = [(bos, False)] if bos else []
        for turn in turns:
            if turn["from"] == "system":
                segments.append((f"{turn['value']}\n\n", False))
            elif turn["from"] == "human":
                segments.append((f"{PLAIN_USER}{turn['value']}\n{PLAIN_ASSISTANT}", False))
            else:
                segments.append((f"{turn['value']}{eos}\n", True))
        return segments

    def _tokenise(
        self,
        segments: list[tuple[str, bool]],
        media_frames: Sequence[int],
        sample_id: str,
        media_tokens: Sequence[int] | None = None,
    ) -> Encoded:
        placeholders = sum(text.count(IMAGE_PLACEHOLDER) for text, _ in segments)
        if placeholders != len(media_frames):
            raise DataError(
                f"sample {sample_id}: {placeholders} <image> placeholders for {len(media_frames)} media."
            )
        if media_tokens is None:
            media_tokens = [self.tokens_for(f) for f in media_frames]
        media_tokens = list(media_tokens)
        pieces: list[tuple[str, bool]] = []
        for text, reply in segments:
            parts = text.split(IMAGE_PLACEHOLDER)
            for k, part in enumerate(parts):
                pieces.append((part, reply))
                if k < len(parts) - 1:
                    pieces.append((IMAGE_PLACEHOLDER, reply))
        texts = [p for p, _ in pieces if p and p != IMAGE_PLACEHOLDER]
        tokenised = iter(self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
        ids: list[int] = []
        labels: list[int] = []
        mask: list[bool] = []
        media = iter(media_tokens)
        for piece, reply in pieces:
            if piece == IMAGE_PLACEHOLDER:
                n = next(media)
                ids += [self.image_token_id] * n
                labels += [IGNORE_INDEX] * n
                mask += [True] * n
            elif piece:
                tok = list(next(tokenised))
                if self.image_token_id in tok:
                    raise DataError(
                        f"sample {sample_id}: its text contains the image-pad token {self.image_token!r} itself; "
                        "remove it (images are marked with <image>)."
                    )
                ids += tok
                labels += tok if (reply or self.loss_on == "all_text") else [IGNORE_INDEX] * len(tok)
                mask += [False] * len(tok)
        return Encoded(ids, labels, mask, media_tokens)


def _single_token_id(tokenizer, token: str) -> int:
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    token_id = tokenizer.convert_tokens_to_ids(token)
    if len(ids) != 1 or ids[0] != token_id or token_id == tokenizer.unk_token_id:
        raise DataError(
            f"the tokenizer has no single token {token!r} (it encodes as {ids}); add it with "
            f"tokenizer.add_special_tokens({{'additional_special_tokens': [{token!r}]}}) and resize the LM embeddings."
        )
    return int(token_id)
