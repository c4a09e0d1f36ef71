"""Speaker similarity: the cosine of two clips' x-vectors from a local transformers ``WavLMForXVector``
(e.g. a copy of microsoft/wavlm-base-plus-sv; nothing downloads). Each clip is resampled to the rate the
model was trained at (its feature extractor's, 16 kHz for WavLM) and embedded alone, so no padding
enters an embedding. Seed-TTS-eval's own verifier is a WavLM-large ECAPA-TDNN: values from different
models are not interchangeable."""

from __future__ import annotations

import os

import numpy as np
import torch

NO_SPEAKER_NOTE = "speaker similarity not computed (no --speaker-model)"

WAVLM_RATE = 16000
"""WavLM's input rate, for a model directory saved without its feature extractor."""


class SpeakerSimilarity:
    """``similarity(generated, rate, reference_path)`` or ``between(a, rate_a, b, rate_b)``: a cosine in [-1, 1]."""

    def __init__(self, path: str, device="cpu"):
        from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor, WavLMForXVector

        if not os.path.isdir(path):
            raise ValueError(f"speaker_model: {path} is not a directory (a local WavLMForXVector model)")
        self.model = WavLMForXVector.from_pretrained(path, local_files_only=True).to(device).eval()
        if os.path.isfile(os.path.join(path, "preprocessor_config.json")):
            self.features = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
        else:  # saved without its extractor: the raw waveform at WavLM's rate
            self.features = Wav2Vec2FeatureExtractor(sampling_rate=WAVLM_RATE, do_normalize=False)
        self.rate = self.features.sampling_rate
        self.device = device
        self.path = path

    def describe(self, reference: str) -> str:
        """A report note: what was compared with what."""
        return f"speaker_similarity: cosine of {self.path}'s x-vectors of the generated speech and {reference}"

    @torch.no_grad()
    def embed(self, wave: np.ndarray, rate: int) -> torch.Tensor:
        """The x-vector of a mono clip at ``rate``."""
        from megatron_soda.codec.audio_io import resample

        wave = resample(np.asarray(wave, np.float32), rate, self.rate)
        inputs = self.features(wave, sampling_rate=self.rate, return_tensors="pt").to(self.device)
        return self.model(**inputs).embeddings[0].float()

    def between(self, a: np.ndarray, rate_a: int, b: np.ndarray, rate_b: int) -> float:
        return float(torch.nn.functional.cosine_similarity(self.embed(a, rate_a), self.embed(b, rate_b), dim=0))

    def __call__(self, generated: np.ndarray, rate: int, reference_path: str) -> float:
        """The similarity of generated speech to the speech in a file (a voice prompt, a source utterance)."""
        from megatron_soda.inference.requests import load_clip

        return self.between(generated, rate, load_clip(reference_path, self.rate), self.rate)


def summarize_similarity(records, similarity, metrics: dict, reference: str, needs: str) -> str:
    """Adds the items' mean ``speaker_similarity`` (to ``reference``) to ``metrics``; the note that says how it
    was measured, or why it was not (no ``--speaker-model``, or no item had ``needs``)."""
    if similarity is None:
        return NO_SPEAKER_NOTE
    values = [r["speaker_similarity"] for r in records if "speaker_similarity" in r]
    if not values:
        return f"speaker similarity not computed: no item had {needs}"
    metrics["speaker_similarity"] = float(np.mean(values))
    return f"{similarity.describe(reference)}; mean over {len(values)} of {len(records)} items"
