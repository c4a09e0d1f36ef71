"""Token ids (or their PUA string form) back to audio and transcripts.

The inverse of preprocessing: a sequence is parsed into its segments (``formats.parse``, strict),
text segments are decoded by the tokenizer, and audio segments by the codec. Each audio segment
gives its own waveform, so a sequence of interleaved utterances gives one clip per utterance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Sequence

import numpy as np

from megatron_soda.data.formats import Kind, parse


@dataclass
class DetokenizedSequence:
    """The readable form of one sequence, segments in order."""

    parts: List[str] = field(default_factory=list)  # "[text] ...", "[audio 3.20 s -> clip 0]", "[plain] ..."
    texts: List[str] = field(default_factory=list)  # the text of each text/plain segment
    clips: List[np.ndarray] = field(default_factory=list)  # one waveform per audio segment
    sample_rate: int = 0

    @property
    def transcript(self) -> str:
        return "\n".join(self.parts)


def detokenize(ids: Sequence[int], tokenizer, codec=None) -> DetokenizedSequence:
    """Segments of ``ids`` as text and (with a codec) waveforms; ValueError on a malformed sequence."""
    layout = tokenizer.layout
    document = parse(np.asarray(ids, dtype=np.int64), layout)
    audio = [layout.ids_to_codes(s.ids) for s in document.segments if s.kind is Kind.AUDIO]
    if codec is not None and (codec.num_codebooks, codec.codebook_size) != (layout.num_codebooks, layout.codebook_size):
        raise ValueError(
            f"codec {codec.name} has {codec.num_codebooks} x {codec.codebook_size} codes but the tokenizer "
            f"{layout.num_codebooks} x {layout.codebook_size}"
        )
    clips = codec.decode(audio) if codec is not None and audio else []
    result = DetokenizedSequence(clips=list(clips), sample_rate=codec.sample_rate if codec is not None else 0)
    clip = 0
    for segment in document.segments:
        if segment.kind is Kind.AUDIO:
            frames = segment.ids.size // layout.num_codebooks
            seconds = f"{frames / codec.frame_rate:.2f} s, " if codec is not None else ""
            result.parts.append(f"[audio {seconds}{frames} frames -> clip {clip}]")
            clip += 1
        else:
            text = tokenizer.decode(segment.ids)
            result.texts.append(text)
            result.parts.append(f"[{segment.kind.value}] {text}")
    return result


def write_detokenized(result: DetokenizedSequence, output_dir: str, name: str) -> List[str]:
    """Writes ``name.txt`` and ``name_clipN.wav`` files; returns their paths."""
    import soundfile

    os.makedirs(output_dir, exist_ok=True)
    paths = [os.path.join(output_dir, f"{name}.txt")]
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write(result.transcript + "\n")
    for index, wave in enumerate(result.clips):
        paths.append(os.path.join(output_dir, f"{name}_clip{index}.wav"))
        soundfile.write(paths[-1], np.asarray(wave, dtype=np.float32), result.sample_rate)
    return paths
