"""The prompt-structure objective of the v2 text encoders: linear probes that read each prompt's scene back.

Why: trained only through the flow loss, the encoders of the first v2 runs carried a bag of words — T5's outputs
for "a red circle left of a blue square" and "... right of ..." differed by 39%, yet the transformer's velocity
for them by 1.6%: nothing in a token said *where* its object goes. The probes make it explicit and linear:

- every T5 token of an object (its article, size, color and shape words) predicts that object's **place** —
  center (single), left / right / top / bottom (relation), pair (count) — and its color, shape and size;
  other tokens (relation words, the background clause, `</s>`) predict "none";
- CLIP's pooled vector predicts the whole scene by place: form, background, and for each place the color,
  shape and size of the object there ("none" where nothing is).

`PromptProbe.loss` is added to the flow loss (weight `ScenesConfig.probe_weight`); `pretrain_text_encoders`
trains the encoders on it alone for a few hundred steps first, so the transformer starts on structured text.
The probes are training aids: they are not part of the saved pipeline.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from quantkit.models import scenes

PLACES = ("none", "center", "left", "right", "top", "bottom", "pair")
_FIRST_PLACE = {"left of": ("left", "right"), "right of": ("right", "left"), "above": ("top", "bottom")}
_FIRST_PLACE["below"] = ("bottom", "top")
COLORS = ("none",) + scenes.COLORS
SHAPES = ("none",) + scenes.SHAPES
SIZES = ("none",) + scenes.SIZES  # "" = medium
FORMS = tuple(scenes.FORM_WEIGHTS)
BACKGROUNDS = scenes.BACKGROUNDS

# (name, classes) of each head; a head's logits are one slice of its probe's output
TOKEN_HEADS = (("place", PLACES), ("color", COLORS), ("shape", SHAPES), ("size", SIZES))
PLACED = PLACES[1:]  # the places the pooled probe describes
POOLED_HEADS = (("form", FORMS), ("background", BACKGROUNDS)) + tuple(
    (f"{place}_{what}", classes) for place in PLACED for what, classes in TOKEN_HEADS[1:]
)
IGNORE = -100  # label of padding positions and of the unconditional prompt ""


def _object_places(scene: scenes.Scene) -> list[str]:
    """The place of each Thing of `scene.things`, in prompt order."""
    if scene.form == "single":
        return ["center"]
    if scene.form == "count":
        return ["pair"]
    return list(_FIRST_PLACE[scene.relation])


def token_labels(prompt: str, text_length: int) -> np.ndarray:
    """Labels (text_length × len(TOKEN_HEADS)) for T5's tokens of `prompt`: one token per word, then `</s>`,
    then padding (IGNORE); "" is all IGNORE."""
    labels = np.full((text_length, len(TOKEN_HEADS)), IGNORE, dtype=np.int64)
    if not prompt:
        return labels
    scene = scenes.parse_prompt(prompt)
    words = prompt.split()
    if len(words) + 1 > text_length:
        raise ValueError(f"{prompt!r} has {len(words)} words; the encoders read {text_length - 1} at most.")
    labels[: len(words) + 1] = 0  # "none" for every real token unless it belongs to an object
    places = _object_places(scene)
    # each object's words: its article ("a"/"two") through its shape word
    position, obj = 0, 0
    while obj < len(scene.things) and position < len(words):
        thing = scene.things[obj]
        end = position + 1 + (1 if thing.size else 0) + 2  # article, [size], color, shape
        row = (PLACES.index(places[obj]), COLORS.index(thing.color), SHAPES.index(thing.shape))
        row += (SIZES.index(thing.size),)
        labels[position:end] = row
        position, obj = end + (len(scene.relation.split()) if scene.form == "relation" else 0), obj + 1
    return labels


def pooled_labels(prompt: str) -> np.ndarray:
    """Labels (len(POOLED_HEADS),) for CLIP's pooled vector of `prompt` ("" is all IGNORE)."""
    if not prompt:
        return np.full(len(POOLED_HEADS), IGNORE, dtype=np.int64)
    scene = scenes.parse_prompt(prompt)
    at = {place: thing for place, thing in zip(_object_places(scene), scene.things, strict=True)}
    row = [FORMS.index(scene.form), BACKGROUNDS.index(scene.background)]
    for place in PLACED:
        thing = at.get(place)
        row += [COLORS.index(thing.color), SHAPES.index(thing.shape), SIZES.index(thing.size)] if thing else [0, 0, 0]
    return np.asarray(row, dtype=np.int64)


def _heads(logits: torch.Tensor, heads):
    """(index, name, that head's logits) for each head: the probe's output is the heads' classes side by side."""
    start = 0
    for index, (name, classes) in enumerate(heads):
        yield index, name, logits[..., start : start + len(classes)]
        start += len(classes)


def _head_losses(logits: torch.Tensor, labels: torch.Tensor, heads) -> list[torch.Tensor]:
    return [
        F.cross_entropy(part.reshape(-1, part.shape[-1]), labels[..., h].reshape(-1))
        for h, _, part in _heads(logits, heads)
    ]


class PromptProbe(torch.nn.Module):
    """Two linear probes: on T5's token outputs (`TOKEN_HEADS`) and on CLIP's pooled output (`POOLED_HEADS`)."""

    def __init__(self, t5_width: int, clip_width: int, text_length: int):
        super().__init__()
        self.text_length = text_length
        self.tokens = torch.nn.Linear(t5_width, sum(len(c) for _, c in TOKEN_HEADS))
        self.pooled = torch.nn.Linear(clip_width, sum(len(c) for _, c in POOLED_HEADS))
        self._labels: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def labels(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(token labels B × L × 4, pooled labels B × 20) of `prompts`, cached per prompt."""
        for prompt in prompts:
            if prompt not in self._labels:
                self._labels[prompt] = (
                    torch.from_numpy(token_labels(prompt, self.text_length)),
                    torch.from_numpy(pooled_labels(prompt)),
                )
        pairs = [self._labels[p] for p in prompts]
        return torch.stack([t for t, _ in pairs]), torch.stack([p for _, p in pairs])

    def loss(self, prompts: list[str], embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over every head of both probes (the unconditional prompt "" is skipped)."""
        keep = [i for i, p in enumerate(prompts) if p]
        if not keep:
            return embeds.sum() * 0.0
        token_y, pooled_y = self.labels([prompts[i] for i in keep])
        losses = _head_losses(self.tokens(embeds[keep]), token_y, TOKEN_HEADS)
        losses += _head_losses(self.pooled(pooled[keep]), pooled_y, POOLED_HEADS)
        return torch.stack(losses).mean()

    @torch.no_grad()
    def accuracy(self, prompts: list[str], embeds: torch.Tensor, pooled: torch.Tensor) -> dict[str, float]:
        """Per-head accuracy: token heads over real tokens, pooled heads over prompts."""
        token_y, pooled_y = self.labels(prompts)
        result = {}
        for logits, labels, heads, prefix in (
            (self.tokens(embeds), token_y, TOKEN_HEADS, "t5_"),
            (self.pooled(pooled), pooled_y, POOLED_HEADS, "clip_"),
        ):
            for h, name, part in _heads(logits, heads):
                guess = part.argmax(-1)
                real = labels[..., h] != IGNORE
                result[prefix + name] = round(float((guess[real] == labels[..., h][real]).float().mean()), 4)
        return result


def build_probe(pipe, text_length: int, seed: int) -> PromptProbe:
    """A probe sized to `pipe`'s encoders (initialised from `seed`; the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PromptProbe(pipe.text_encoder_2.config.d_model, pipe.text_encoder.config.hidden_size, text_length)


def probe_accuracy(pipe, probe: PromptProbe, prompts: list[str], text_length: int) -> dict[str, float]:
    """`probe.accuracy` on the pipeline's own encodings of `prompts` (eval mode, no gradients)."""
    with torch.no_grad():
        embeds, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, max_sequence_length=text_length)
    return probe.accuracy(prompts, embeds, pooled)


def pretrain_text_encoders(pipe, probe: PromptProbe, prompts: list[str], config, text_length: int, log=print) -> dict:
    """Train CLIP, T5 and the probe on `PromptProbe.loss` alone for `config.text_pretrain_steps` steps.

    Reads config.seed, text_pretrain_steps, batch_size, text_lr, weight_decay, grad_clip.

    Returns:
        dict with the probe loss of the first and last 50 steps and the per-head accuracy after.
    """
    unique = sorted(set(prompts))
    generator = torch.Generator().manual_seed(config.seed + 2)
    encoders = [pipe.text_encoder, pipe.text_encoder_2]
    params = [p for m in encoders + [probe] for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.text_lr, weight_decay=config.weight_decay)
    for module in encoders:
        module.train()
    losses = []
    for _ in tqdm(range(config.text_pretrain_steps), desc="text", mininterval=10):
        batch = [unique[i] for i in torch.randint(len(unique), (config.batch_size,), generator=generator).tolist()]
        embeds, pooled, _ = pipe.encode_prompt(batch, prompt_2=None, max_sequence_length=text_length)
        loss = probe.loss(batch, embeds, pooled)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        losses.append(loss.item())
    for module in encoders:
        module.eval()
    accuracy = probe_accuracy(pipe, probe, unique[:512], text_length)
    first, last = float(np.mean(losses[:50])), float(np.mean(losses[-50:]))
    log(f"text pre-training: probe loss {first:.3f} → {last:.3f}; accuracy {accuracy}")
    return {"probe_pretrain_loss_first": first, "probe_pretrain_loss_last": last, "probe_pretrain_accuracy": accuracy}
