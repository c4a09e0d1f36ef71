#!/usr/bin/env python3
"""Regenerate megatron-soda's small offline speech corpus (data/demo_corpus) with espeak-ng.

    python tools/make_demo_corpus.py --output-dir data/demo_corpus --overwrite

No speech corpus can be downloaded where this project is built and tested, so the demo and the tests use
synthetic speech with exact transcripts: sentences made up by this script from its own templates and word
lists, spoken by several espeak-ng voices at several speaking rates, resampled to 16 kHz mono and stored as
FLAC (lossless, 16-bit). The output is deterministic for a given seed and espeak-ng version.

Written to the output directory:
  audio/*.flac      one file per utterance, or one file per "long recording" holding several utterances
  manifest.jsonl    one JSON object per utterance (fields below)
  text.jsonl        text-only documents (a few sentences each) from the same sentence generator
  README.md         provenance, licence, counts and the manifest fields

Manifest fields: audio (path relative to the manifest), text, id, speaker (the espeak-ng voice),
recording (groups utterances into one document), index (order within the recording), start/end (seconds
within the audio file; only for segments of long recordings), duration (seconds), language ("en").

Needs the espeak-ng program (Debian/Ubuntu: apt-get install espeak-ng). The shipped corpus does not:
tests and `make demo` only read it. --json writes the closing summary as JSON too.
"""

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf
import soxr

from megatron_soda.checks import check_at_least, check_output_dir
from megatron_soda.flags import FlagParser, flag
from megatron_soda.tool_json import check_json_path, write_json

REPO = Path(__file__).resolve().parents[1]
ESPEAK_RATE = 22050  # espeak-ng's output sample rate

# espeak-ng voices (language + optional "+variant"); `speaker` in the manifest is this name. The pitch
# (espeak-ng -p, 0..99, default 50) is fixed per voice so that a speaker sounds the same everywhere.
VOICES = {
    "en-us": 48,
    "en-gb": 42,
    "en-us+f3": 55,
    "en-gb-x-rp+m3": 40,
    "en-gb-scotland+f2": 52,
    "en-029+m4": 46,
    "en-us-nyc+f4": 58,
    "en-gb-x-gbclan": 50,
    "en-gb-x-gbcwmd+f5": 54,
    "en-us+klatt4": 44,
}
RATES = (160, 175, 190, 205, 220)  # words per minute (espeak-ng -s; default 175)

MIN_SECONDS, MAX_SECONDS = 1.5, 6.0  # per utterance, silence margins included
MIN_WORDS, MAX_WORDS = 4, 20
LEAD_SECONDS, TAIL_SECONDS = 0.08, 0.12  # silence kept around each trimmed utterance
SILENCE_THRESHOLD = 64  # |int16 sample| above this counts as speech when trimming

# ---------------------------------------------------------------------------------------------------------
# Sentence generator: our own templates and word lists.

NAMES = (
    "Amara",
    "Tomasz",
    "Priya",
    "Jonah",
    "Elena",
    "Kwame",
    "Rosa",
    "Felix",
    "Ingrid",
    "Mateo",
    "Hana",
    "Oliver",
    "Nadia",
    "Declan",
    "Yusuf",
    "Greta",
    "Lucas",
    "Mei",
    "Samuel",
    "Olga",
    "Theo",
    "Leila",
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

# Each topic: nouns (singular, plural), places, adjectives, verbs (base, past, third person) and a few
# sentences of its own. Generic verbs are added to every topic.
GENERIC_VERBS = (
    ("carry", "carried", "carries"),
    ("find", "found", "finds"),
    ("move", "moved", "moves"),
    ("check", "checked", "checks"),
    ("clean", "cleaned", "cleans"),
    ("count", "counted", "counts"),
    ("borrow", "borrowed", "borrows"),
    ("wrap", "wrapped", "wraps"),
)
TOPICS = {
    "harbour": dict(
        nouns=(
            ("boat", "boats"),
            ("ferry", "ferries"),
            ("rope", "ropes"),
            ("net", "nets"),
            ("lantern", "lanterns"),
            ("crab", "crabs"),
            ("anchor", "anchors"),
            ("sail", "sails"),
        ),
        places=("pier", "harbour wall", "fish market", "lighthouse", "boat shed", "slipway"),
        adjs=("salty", "heavy", "faded", "bright", "slippery", "old", "wooden", "noisy"),
        verbs=(
            ("repair", "repaired", "repairs"),
            ("paint", "painted", "paints"),
            ("tie", "tied", "ties"),
            ("haul", "hauled", "hauls"),
        ),
        own=(
            "The tide came in quickly, and the {nouns} rocked against the {place}.",
            "Gulls were circling the {place} long before sunrise.",
            "{Name} says the ferry to the island leaves at {time}.",
            "Is the wind too strong for the small boats today?",
        ),
    ),
    "kitchen": dict(
        nouns=(
            ("pot", "pots"),
            ("onion", "onions"),
            ("loaf", "loaves"),
            ("spoon", "spoons"),
            ("plate", "plates"),
            ("lemon", "lemons"),
            ("jar", "jars"),
            ("pancake", "pancakes"),
        ),
        places=("kitchen", "pantry", "bakery", "dining room", "back door", "cupboard"),
        adjs=("warm", "sticky", "fresh", "burnt", "crispy", "tiny", "golden", "sour"),
        verbs=(
            ("chop", "chopped", "chops"),
            ("wash", "washed", "washes"),
            ("bake", "baked", "bakes"),
            ("stir", "stirred", "stirs"),
        ),
        own=(
            "Add a pinch of salt and let the soup simmer for {num} minutes.",
            "{Name} burnt the toast again, didn't {pronoun}?",
            "The bread needs another {num} minutes in the oven.",
            "Who left the {nouns} on the table?",
        ),
    ),
    "garden": dict(
        nouns=(
            ("tomato", "tomatoes"),
            ("seed", "seeds"),
            ("spade", "spades"),
            ("rose", "roses"),
            ("snail", "snails"),
            ("bucket", "buckets"),
            ("hedge", "hedges"),
            ("pumpkin", "pumpkins"),
        ),
        places=("greenhouse", "vegetable patch", "compost heap", "orchard", "garden gate", "pond"),
        adjs=("muddy", "green", "enormous", "ripe", "thirsty", "crooked", "quiet", "sunny"),
        verbs=(
            ("water", "watered", "waters"),
            ("plant", "planted", "plants"),
            ("trim", "trimmed", "trims"),
            ("pick", "picked", "picks"),
        ),
        own=(
            "The first frost arrived in {month}, a little earlier than usual.",
            "We planted {num} rows of beans along the {place}.",
            "Snails ate half of the lettuce overnight!",
            "Does the {place} need more shade in summer?",
        ),
    ),
    "railway": dict(
        nouns=(
            ("train", "trains"),
            ("ticket", "tickets"),
            ("suitcase", "suitcases"),
            ("carriage", "carriages"),
            ("timetable", "timetables"),
            ("bench", "benches"),
            ("whistle", "whistles"),
            ("map", "maps"),
        ),
        places=("platform", "station", "waiting room", "ticket office", "level crossing", "bridge"),
        adjs=("late", "crowded", "empty", "dusty", "shiny", "narrow", "long", "cold"),
        verbs=(
            ("board", "boarded", "boards"),
            ("miss", "missed", "misses"),
            ("wave at", "waved at", "waves at"),
            ("follow", "followed", "follows"),
        ),
        own=(
            "The train to the coast is running {num} minutes late.",
            "Please stand back from the edge of the {place}.",
            "{Name} fell asleep and missed the last stop.",
            "Which platform does the night train leave from?",
        ),
    ),
    "mountains": dict(
        nouns=(
            ("cloud", "clouds"),
            ("path", "paths"),
            ("boot", "boots"),
            ("rope", "ropes"),
            ("goat", "goats"),
            ("stone", "stones"),
            ("tent", "tents"),
            ("stream", "streams"),
        ),
        places=("ridge", "valley", "mountain hut", "summit", "lake shore", "pine forest"),
        adjs=("steep", "foggy", "icy", "windy", "distant", "rocky", "calm", "grey"),
        verbs=(
            ("climb", "climbed", "climbs"),
            ("cross", "crossed", "crosses"),
            ("pack", "packed", "packs"),
            ("watch", "watched", "watches"),
        ),
        own=(
            "We reached the {place} just before the storm.",
            "The path above the {place} is closed until {month}.",
            "{Name} counted {num} goats on the way down.",
            "Can you hear the thunder behind the {place}?",
        ),
    ),
    "workshop": dict(
        nouns=(
            ("bicycle", "bicycles"),
            ("wheel", "wheels"),
            ("bolt", "bolts"),
            ("hammer", "hammers"),
            ("lamp", "lamps"),
            ("drawer", "drawers"),
            ("chair", "chairs"),
            ("clock", "clocks"),
        ),
        places=("workshop", "garage", "workbench", "tool shed", "attic", "yard"),
        adjs=("rusty", "loose", "broken", "squeaky", "polished", "sturdy", "oily", "bent"),
        verbs=(
            ("fix", "fixed", "fixes"),
            ("sand", "sanded", "sands"),
            ("tighten", "tightened", "tightens"),
            ("oil", "oiled", "oils"),
        ),
        own=(
            "The old clock in the {place} stopped at {time}.",
            "Measure twice, and then cut once.",
            "{Name} needs {num} more screws for the shelf.",
            "Why does the front wheel squeak on every hill?",
        ),
    ),
    "library": dict(
        nouns=(
            ("book", "books"),
            ("shelf", "shelves"),
            ("notebook", "notebooks"),
            ("pencil", "pencils"),
            ("letter", "letters"),
            ("atlas", "atlases"),
            ("poem", "poems"),
            ("diary", "diaries"),
        ),
        places=("library", "reading room", "classroom", "archive", "study", "front desk"),
        adjs=("thick", "dusty", "rare", "blue", "torn", "heavy", "famous", "tiny"),
        verbs=(
            ("read", "read", "reads"),
            ("return", "returned", "returns"),
            ("copy", "copied", "copies"),
            ("sort", "sorted", "sorts"),
        ),
        own=(
            "The {place} closes at {time} on {day}s.",
            "{Name} has read {num} novels since {month}.",
            "Please keep your voice down in the {place}.",
            "Have you finished the chapter about the old harbour?",
        ),
    ),
    "market": dict(
        nouns=(
            ("apple", "apples"),
            ("basket", "baskets"),
            ("cheese", "cheeses"),
            ("umbrella", "umbrellas"),
            ("melon", "melons"),
            ("scarf", "scarves"),
            ("candle", "candles"),
            ("coin", "coins"),
        ),
        places=("market square", "fruit stall", "corner shop", "town hall", "bus stop", "fountain"),
        adjs=("cheap", "colourful", "ripe", "soft", "expensive", "shiny", "round", "striped"),
        verbs=(
            ("buy", "bought", "buys"),
            ("sell", "sold", "sells"),
            ("weigh", "weighed", "weighs"),
            ("choose", "chose", "chooses"),
        ),
        own=(
            "Three apples cost {num} pence at the {place}.",
            "The market opens early on {day}s, usually around {time}.",
            "{Name} bargained for ages over a {adj} scarf.",
            "Do you take cards, or only cash?",
        ),
    ),
    "music": dict(
        nouns=(
            ("violin", "violins"),
            ("drum", "drums"),
            ("song", "songs"),
            ("trumpet", "trumpets"),
            ("guitar", "guitars"),
            ("piano", "pianos"),
            ("ticket", "tickets"),
            ("chord", "chords"),
        ),
        places=("concert hall", "rehearsal room", "bandstand", "music shop", "stage", "school hall"),
        adjs=("loud", "gentle", "cheerful", "slow", "strange", "lovely", "sad", "lively"),
        verbs=(
            ("tune", "tuned", "tunes"),
            ("play", "played", "plays"),
            ("practise", "practised", "practises"),
            ("record", "recorded", "records"),
        ),
        own=(
            "The choir sang {num} songs without a single break.",
            "{Name} practised the same chord until {time}.",
            "Could you play that tune once more, a little slower?",
            "The concert starts at {time}, so don't be late!",
        ),
    ),
    "sky": dict(
        nouns=(
            ("star", "stars"),
            ("telescope", "telescopes"),
            ("comet", "comets"),
            ("planet", "planets"),
            ("cloud", "clouds"),
            ("lens", "lenses"),
            ("chart", "charts"),
            ("satellite", "satellites"),
        ),
        places=("roof", "hilltop", "observatory", "back garden", "field", "balcony"),
        adjs=("faint", "bright", "distant", "silver", "clear", "red", "dark", "cold"),
        verbs=(
            ("spot", "spotted", "spots"),
            ("point at", "pointed at", "points at"),
            ("photograph", "photographed", "photographs"),
            ("track", "tracked", "tracks"),
        ),
        own=(
            "The moon rose over the {place} at {time}.",
            "{Name} saw {num} shooting stars in less than an hour.",
            "Is that a planet, or just a very bright star?",
            "Clouds covered the whole sky by midnight.",
        ),
    ),
}

# Generic sentence templates, filled from a topic. {Name}/{Name2}: names, {num}/{num2}: spelled-out numbers,
# {noun}/{nouns}: singular/plural, {vpast}/{vbase}/{v3}: verb forms.
TEMPLATES = (
    "{Name} {vpast} the {adj} {noun} near the {place}.",
    "On {day} morning we counted {num} {nouns} by the {place}.",
    "Did you see the {adj} {noun} at {time}?",
    "The {noun} looked {adj}, but nobody seemed to mind.",
    '{Name} said, "Bring {num} {nouns} and meet me at the {place}."',
    "It took about {num} minutes to reach the {place}.",
    "Please don't leave the {noun} in the {place} again!",
    "After {time}, {Name} and {Name2} walked home past the {place}.",
    "There were {num} {nouns}, {num2} {nouns2}, and one {adj} {noun3} in the {place}.",
    "Why is the {noun} always so {adj} on {day}s?",
    "We'll need {num} more {nouns} before {time}.",
    "By {time}, the {place} was quiet again.",
    "Although the {noun} looked {adj} from the {place}, {Name} wanted to wait until {time} before we {vbase} it.",
    "{Name} can't find the {noun}.",
    "Nobody expected the {noun} to be this {adj}.",
    "Is it true that {Name} {vpast} {num} {nouns} in one afternoon?",
    "Every {day}, {Name} {v3} the {nouns} before {time}.",
    "What a {adj} {noun}!",
    "The {noun} by the {place} has been {adj} since {month}.",
    "First we {vpast} the {noun}; then we rested for {num} minutes.",
    "If the {noun} is still {adj} tomorrow, we will {vbase} it together.",
    "{Name}'s {noun} was surprisingly {adj}, wasn't it?",
    "Hold on, the {noun} isn't where we left it.",
    "Only {num} people came to the {place} on {day}.",
    "Keep the {nouns} dry, and keep the {noun} away from the {place}.",
    "{Name} asked whether the {place} opens at {time} or a little later.",
    "Yes, the {adj} {noun} belongs to {Name}.",
    "We waited {num} minutes, and the {noun} still wasn't ready.",
    "Could someone {vbase} the {noun} before {Name} gets back?",
    "Back in {year}, the {place} had only {num} {nouns}.",
    "No, {Name}, the {nouns} go next to the {place}.",
    "Well, that {noun} is far too {adj} for me.",
    # short ones
    "{Name} {vpast} the {noun}.",
    "Where is the {adj} {noun}?",
    "The {place} is {adj} today.",
    "See you at {time}!",
    "Not the {noun} again!",
    "{Name} lost {num} {nouns}.",
    "That {noun} is really {adj}.",
    "Thank you very much, {Name}.",
    "We {vpast} it on {day}.",
    "Is the {place} open yet?",
    "The {nouns} are {adj} this year.",
    "Ask {Name} about the {noun}.",
    "Meet me by the {place}.",
    "Oh no, the {noun} is {adj}!",
    "{Name}, please {vbase} the {noun}.",
    "It was {num} degrees on {day}.",
    "Who has seen my {noun}?",
    "Maybe {Name} knows the way.",
)

ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def spell(n: int) -> str:
    """English words for 0 <= n < 1000 ("forty-two", "three hundred and six")."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + spell(rest))


def spell_year(year: int) -> str:
    """'nineteen eighty-four', 'two thousand and nine', 'twenty twelve'."""
    hi, lo = divmod(year, 100)
    if 2000 <= year < 2010:
        return "two thousand" + ("" if lo == 0 else " and " + ONES[lo])
    return spell(hi) + " " + ("hundred" if lo == 0 else ("oh " + ONES[lo] if lo < 10 else spell(lo)))


def spell_time(rng: random.Random) -> str:
    hour = rng.randint(1, 12)
    kind = rng.randrange(6)
    if kind == 0:
        return f"{spell(hour)} o'clock"
    if kind == 1:
        return f"half past {spell(hour)}"
    if kind == 2:
        return f"a quarter to {spell(hour)}"
    if kind == 3:
        return f"a quarter past {spell(hour)}"
    minute = rng.choice((5, 10, 20, 25, 35, 40, 45, 50, 55))
    if kind == 4:
        return f"{spell(hour)} {'oh ' if minute < 10 else ''}{spell(minute)}"
    return f"{spell(minute if minute < 30 else 60 - minute)} {'past' if minute < 30 else 'to'} {spell(hour)}"


def fill(template: str, topic: dict, rng: random.Random) -> str:
    verbs = topic["verbs"] + GENERIC_VERBS
    nouns = list(topic["nouns"])
    rng.shuffle(nouns)  # {noun}, {noun2}, {noun3} differ
    names = rng.sample(NAMES, 2)
    verb = rng.choice(verbs)
    nums = rng.sample(range(2, 60), 2)
    values = {
        "Name": names[0],
        "Name2": names[1],
        "pronoun": rng.choice(("he", "she")),
        "noun": nouns[0][0],
        "nouns": nouns[0][1],
        "noun2": nouns[1][0],
        "nouns2": nouns[1][1],
        "noun3": nouns[2][0],
        "place": rng.choice(topic["places"]),
        "adj": rng.choice(topic["adjs"]),
        "vbase": verb[0],
        "vpast": verb[1],
        "v3": verb[2],
        "num": spell(nums[0]),
        "num2": spell(nums[1]),
        "time": spell_time(rng),
        "day": rng.choice(DAYS),
        "month": rng.choice(MONTHS),
        "year": spell_year(rng.randint(1890, 2015)),
    }
    text = template.format(**values)
    text = re.sub(r"\b([Aa]) (?=[aeio])", r"\1n ", text)  # "a orange" -> "an orange"
    return text[0].upper() + text[1:]


def templates_for(topic_name: str, rng: random.Random) -> list:
    """The topic's own templates and the generic ones, in a random order (a document walks through them,
    so no template repeats within a document)."""
    pool = list(TOPICS[topic_name]["own"]) + list(TEMPLATES)
    rng.shuffle(pool)
    return pool


def sentence(topic_name: str, template: str, rng: random.Random, min_words=MIN_WORDS, max_words=MAX_WORDS):
    """`template` filled from the topic, or None when no filling has min_words..max_words words."""
    for _ in range(8):
        text = fill(template, TOPICS[topic_name], rng)
        if max(min_words, MIN_WORDS) <= len(text.split()) <= min(max_words, MAX_WORDS):
            return text
    return None


def document(topic_name: str, count: int, rng: random.Random) -> list:
    """`count` sentences on one topic, no template twice."""
    sentences = []
    for template in templates_for(topic_name, rng):
        text = sentence(topic_name, template, rng)
        if text is not None:
            sentences.append(text)
        if len(sentences) == count:
            return sentences
    raise RuntimeError(f"topic {topic_name!r} has too few templates for {count} sentences")


# ---------------------------------------------------------------------------------------------------------
# Speech.


def espeak_version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"text-to-speech:\s*(\S+)", out)
    return match.group(1) if match else out.strip()


def synthesize(exe: str, text: str, voice: str, rate: int, sample_rate: int) -> np.ndarray:
    """espeak-ng -> int16 mono at `sample_rate`, leading/trailing silence trimmed to small margins."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "u.wav")
        cmd = [exe, "-v", voice, "-s", str(rate), "-p", str(VOICES[voice]), "-b", "1", "-w", wav, text]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(wav):
            raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.strip() or proc.returncode}")
        data, sr = sf.read(wav, dtype="int16")
    if sr != ESPEAK_RATE or data.ndim != 1:
        raise RuntimeError(f"unexpected espeak-ng output: {sr} Hz, shape {data.shape}")
    loud = np.flatnonzero(np.abs(data.astype(np.int32)) > SILENCE_THRESHOLD)
    if loud.size == 0:
        raise RuntimeError(f"espeak-ng produced silence for voice {voice!r}: {text!r}")
    lo = max(0, loud[0] - int(LEAD_SECONDS * sr))
    hi = min(len(data), loud[-1] + 1 + int(TAIL_SECONDS * sr))
    x = data[lo:hi].astype(np.float64) / 32768.0
    y = soxr.resample(x, sr, sample_rate, quality="HQ")
    peak = float(np.abs(y).max())
    if peak > 0.97:  # espeak-ng speaks near full scale and resampling overshoots: attenuate rather than clip
        y *= 0.97 / peak
    return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)


# Length classes for spoken sentences (words, weight): mostly short ones, so that about a hundred
# utterances fit in a few MB of lossless audio.
LENGTHS = (((4, 7), 0.65), ((8, 12), 0.27), ((13, 20), 0.08))


def speak_until_fits(exe, topic, templates, voice, rate, sample_rate, seed):
    """Fills `templates` in turn (deterministically from `seed`), aiming at a drawn length class, until a
    sentence lasts MIN_SECONDS..MAX_SECONDS; falls back to any length after a full pass."""
    rng = random.Random(seed)
    words = rng.choices([r for r, _ in LENGTHS], [w for _, w in LENGTHS])[0]
    for attempt in range(4 * len(templates)):
        lo, hi = words if attempt < len(templates) else (MIN_WORDS, MAX_WORDS)
        text = sentence(topic, templates[attempt % len(templates)], rng, lo, hi)
        if text is None:
            continue
        audio = synthesize(exe, text, voice, rate, sample_rate)
        if MIN_SECONDS <= len(audio) / sample_rate <= MAX_SECONDS:
            return text, audio
    raise RuntimeError(f"no sentence fits {MIN_SECONDS}..{MAX_SECONDS} s for {voice} at {rate} wpm")


def write_flac(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    sf.write(str(path), audio, sample_rate, format="FLAC", subtype="PCM_16", compression_level=1.0)


# ---------------------------------------------------------------------------------------------------------


def plan(num_recordings: int, num_long: int, num_utterances: int, rng: random.Random) -> list:
    """Recordings: name, topic, the voice of each utterance, speaking rate, long (one audio file) or not.
    Recordings hold 2..6 utterances (long ones 4..6), num_utterances in all."""
    lows = [4 if r < num_long else 2 for r in range(num_recordings)]
    if not sum(lows) <= num_utterances <= 6 * num_recordings:
        raise SystemExit(
            f"error: {num_recordings} recordings ({num_long} long) cannot hold {num_utterances} "
            f"utterances (between {sum(lows)} and {6 * num_recordings})"
        )
    long_slots = set(rng.sample(range(num_recordings), num_long))
    lows = [4 if r in long_slots else 2 for r in range(num_recordings)]
    counts = [rng.randint(low, 6) for low in lows]
    while sum(counts) != num_utterances:  # nudge random recordings to the requested total
        r = rng.randrange(num_recordings)
        if sum(counts) > num_utterances and counts[r] > lows[r]:
            counts[r] -= 1
        elif sum(counts) < num_utterances and counts[r] < 6:
            counts[r] += 1
    voices = list(VOICES)
    topics = list(TOPICS)
    dialogue = min(long_slots) if long_slots else None  # one long recording is a two-voice dialogue
    recordings = []
    for r, count in enumerate(counts):
        voice = voices[r % len(voices)]  # every voice is used
        if r == dialogue:
            other = rng.choice([v for v in voices if v != voice])
            speakers = [voice if i % 2 == 0 else other for i in range(count)]
        else:
            speakers = [voice] * count
        recordings.append(
            dict(
                name=f"rec{r + 1:02d}",
                topic=topics[r % len(topics)],
                speakers=speakers,
                rate=rng.choice(RATES),
                long=r in long_slots,
            )
        )
    return recordings


def readme(version, stats, args) -> str:
    voices = ", ".join(f"`{v}`" for v in sorted(stats["speakers"]))
    return f"""# megatron-soda demo speech corpus

A small speech corpus with exact transcripts for `make demo` and the tests, made offline: every sentence
was generated by `tools/make_demo_corpus.py` from its own templates and word lists (no existing text corpus
was used) and spoken by the **espeak-ng** speech synthesizer (version {version}). It is synthetic speech,
not a recording of any person.

## Contents

| | |
|---|---|
| utterances | {stats["utterances"]} |
| recordings (documents) | {stats["recordings"]} ({stats["long"]} long recordings holding several utterances in one file) |
| audio files | {stats["files"]} |
| audio | {stats["seconds"]:.1f} s ({stats["seconds"] / 3600:.4f} h), utterances {stats["min"]:.2f}..{stats["max"]:.2f} s |
| speakers (espeak-ng voices) | {len(stats["speakers"])}: {voices} |
| speaking rates | {", ".join(map(str, RATES))} words per minute |
| text-only documents | {stats["text_docs"]} in `text.jsonl` |
| audio format | FLAC, 16-bit, mono, {args.sample_rate} Hz (espeak-ng speaks at 22,050 Hz; resampled with soxr "HQ") |

## Files

- `manifest.jsonl`: one JSON object per utterance.
- `audio/recNN_UU.flac`: one utterance per file; `audio/recNN.flac`: a long recording (several utterances
  with short silences between them).
- `text.jsonl`: text-only documents (`id`, `text`: a few sentences on one topic) from the same generator,
  for the text-only share of the data.

Manifest fields:

| field | meaning |
|---|---|
| `id` | utterance id, `recNN-UU` |
| `audio` | audio file, relative to the manifest |
| `text` | exact transcript (what espeak-ng was given; numbers are spelled out) |
| `speaker` | espeak-ng voice name (`language+variant`) |
| `recording` | groups the utterances of one document |
| `index` | order of the utterance within its recording (0, 1, ...) |
| `start`, `end` | seconds within the audio file; present only for segments of a long recording |
| `duration` | seconds (the whole file, or `end - start` for a segment) |
| `language` | `en` |

Order within a recording: by `start` for segments of one long file (the same order as `index`), else by
`index`. Every recording has at least two utterances. One long recording is a dialogue between two voices,
so `speaker` can change within a recording.

## Regenerate

Needs espeak-ng (`apt-get install espeak-ng`); took about a second here. The output is deterministic for a
given seed and espeak-ng version (the decoded samples; the FLAC bytes can also depend on the libFLAC version):

    .venv/bin/python tools/make_demo_corpus.py --output-dir data/demo_corpus --overwrite

Defaults used: `--seed {args.seed} --recordings {args.recordings} --long-recordings {args.long_recordings} \
--utterances {args.utterances} --text-documents {args.text_documents} --sample-rate {args.sample_rate} \
--max-mb {args.max_mb}`. Voices that need MBROLA (`mb-*`) are not used. Sentences last {MIN_SECONDS}..{MAX_SECONDS} s
and have {MIN_WORDS}..{MAX_WORDS} words; leading and trailing silence is trimmed to {LEAD_SECONDS} s / {TAIL_SECONDS} s;
long recordings put 0.3..0.9 s of silence between utterances.
`tests/test_demo_corpus.py` checks the shipped files and does not need espeak-ng.

## Licence

Generated by the megatron-soda project and distributed under the project's licence (Apache-2.0). The
sentences are the project's own; the audio is machine-generated by espeak-ng (GPL-3.0 software, whose
output is not covered by its licence) and is not a recording of any person.
"""


@dataclass
class CorpusConfig:
    output_dir: str = str(REPO / "data" / "demo_corpus")
    """where to write."""
    overwrite: bool = False
    """replace an existing output directory."""
    seed: int = 2026
    """random seed."""
    recordings: int = 25
    """recordings / documents."""
    long_recordings: int = 4
    """how many recordings are one long audio file with segments."""
    utterances: int = 100
    """utterances in all, 2..6 per recording (4..6 per long one)."""
    text_documents: int = 200
    """documents in text.jsonl."""
    sample_rate: int = 16000
    """output sample rate in Hz."""
    max_mb: float = 5.0
    """fail if the output directory exceeds this many MB (10^6 bytes)."""
    espeak: str = "espeak-ng"
    """espeak-ng executable, looked up on PATH."""
    jobs: int = os.cpu_count() or 1
    """parallel espeak-ng processes (the CPU count by default)."""
    progress: bool = True
    """show a progress bar over the utterances spoken."""
    json: Optional[str] = field(default=None, metadata=flag(metavar="PATH"))
    """also write the summary as one JSON object to PATH ("-": to stdout, in place of the text)."""

    def check(self) -> None:
        check_at_least("--recordings", self.recordings, 1)
        if not 0 <= self.long_recordings <= self.recordings:
            raise ValueError(
                f"--long-recordings {self.long_recordings} must be between 0 and --recordings {self.recordings}"
            )
        low, high = 4 * self.long_recordings + 2 * (self.recordings - self.long_recordings), 6 * self.recordings
        if not low <= self.utterances <= high:
            raise ValueError(
                f"--utterances {self.utterances}: {self.recordings} recordings ({self.long_recordings} "
                f"long) hold between {low} and {high}"
            )
        check_at_least("--text-documents", self.text_documents, 0)
        check_at_least("--sample-rate", self.sample_rate, 8000)
        if self.max_mb <= 0:
            raise ValueError(f"--max-mb must be > 0, got {self.max_mb}")
        check_at_least("--jobs", self.jobs, 1)
        check_output_dir("--output-dir", self.output_dir)
        out = Path(self.output_dir)
        if out.is_dir() and any(out.iterdir()) and not self.overwrite:
            raise ValueError(f"--output-dir {out} exists and is not empty; pass --overwrite to replace it")
        check_json_path(self.json)


def build_parser() -> FlagParser:
    return FlagParser(CorpusConfig, prog=os.path.basename(__file__), description=__doc__, check=CorpusConfig.check)


def main(argv=None) -> int:
    args = build_parser().parse(argv)

    exe = shutil.which(args.espeak)
    if exe is None:
        sys.exit(
            f"error: espeak-ng not found ({args.espeak!r} is not on PATH). Install it first, e.g. "
            "`apt-get install espeak-ng` on Debian/Ubuntu. The shipped corpus in data/demo_corpus "
            "does not need it; only regenerating it does."
        )
    out = Path(args.output_dir)

    started = time.time()
    version = espeak_version(exe)
    for voice in VOICES:  # fail early and clearly on a voice this espeak-ng lacks
        synthesize(exe, "Testing one two three.", voice, 175, args.sample_rate)

    rng = random.Random(args.seed)
    recordings = plan(args.recordings, args.long_recordings, args.utterances, rng)
    jobs = []  # (recording index, utterance index, its templates, seed)
    for r, rec in enumerate(recordings):
        pool = templates_for(rec["topic"], rng)
        n = len(rec["speakers"])
        for u in range(n):
            jobs.append((r, u, pool[u::n], rng.getrandbits(64)))  # disjoint: no template twice in a recording

    def work(job):
        r, u, templates, seed = job
        rec = recordings[r]
        return speak_until_fits(exe, rec["topic"], templates, rec["speakers"][u], rec["rate"], args.sample_rate, seed)

    from tqdm import tqdm

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        spoken = tqdm(pool.map(work, jobs), total=len(jobs), unit="utt", desc="espeak-ng", disable=not args.progress)
        results = dict(zip([(r, u) for r, u, _, _ in jobs], spoken))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private
        (tmp / "audio").mkdir()
        sr = args.sample_rate
        lines = []
        durations = []
        files = 0
        for r, rec in enumerate(recordings):
            name = rec["name"]
            if rec["long"]:
                gap_rng = random.Random(f"{args.seed}-{name}-gaps")
                pieces = [np.zeros(int(0.3 * sr), np.int16)]
                offset = len(pieces[0])
                segments = []
                for u in range(len(rec["speakers"])):
                    text, audio = results[(r, u)]
                    segments.append((u, text, offset, offset + len(audio)))
                    gap = np.zeros(int(gap_rng.uniform(0.3, 0.9) * sr), np.int16)
                    pieces += [audio, gap]
                    offset += len(audio) + len(gap)
                path = f"audio/{name}.flac"
                write_flac(tmp / path, np.concatenate(pieces), sr)
                files += 1
                for u, text, a, b in segments:
                    durations.append((b - a) / sr)
                    lines.append(
                        dict(
                            id=f"{name}-{u:02d}",
                            audio=path,
                            text=text,
                            speaker=rec["speakers"][u],
                            recording=name,
                            index=u,
                            start=round(a / sr, 5),
                            end=round(b / sr, 5),
                            duration=round((b - a) / sr, 5),
                            language="en",
                        )
                    )
            else:
                for u in range(len(rec["speakers"])):
                    text, audio = results[(r, u)]
                    path = f"audio/{name}_{u:02d}.flac"
                    write_flac(tmp / path, audio, sr)
                    files += 1
                    durations.append(len(audio) / sr)
                    lines.append(
                        dict(
                            id=f"{name}-{u:02d}",
                            audio=path,
                            text=text,
                            speaker=rec["speakers"][u],
                            recording=name,
                            index=u,
                            duration=round(len(audio) / sr, 5),
                            language="en",
                        )
                    )
        with open(tmp / "manifest.jsonl", "w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")

        text_rng = random.Random(f"{args.seed}-text")
        with open(tmp / "text.jsonl", "w", encoding="utf-8") as f:
            for d in range(args.text_documents):
                topic = text_rng.choice(list(TOPICS))
                body = " ".join(document(topic, text_rng.randint(2, 6), text_rng))
                f.write(json.dumps(dict(id=f"text{d + 1:04d}", text=body), ensure_ascii=False) + "\n")

        stats = dict(
            utterances=len(lines),
            recordings=len(recordings),
            long=args.long_recordings,
            files=files,
            seconds=sum(durations),
            min=min(durations),
            max=max(durations),
            speakers={line["speaker"] for line in lines},
            text_docs=args.text_documents,
        )
        (tmp / "README.md").write_text(readme(version, stats, args), encoding="utf-8")

        total = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        if total > args.max_mb * 1e6:
            sys.exit(
                f"error: the corpus takes {total / 1e6:.2f} MB, over --max-mb {args.max_mb}; "
                "use fewer --recordings (the audio stays lossless)"
            )
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)

    elapsed = time.time() - started
    if args.json != "-":
        print(
            f"wrote {out}: {stats['utterances']} utterances in {stats['recordings']} recordings "
            f"({files} audio files), {stats['seconds']:.1f} s of audio, {len(stats['speakers'])} voices, "
            f"{args.text_documents} text documents, {total / 1e6:.2f} MB, espeak-ng {version}, {elapsed:.1f} s"
        )
    summary = dict(output_dir=str(out), audio_files=files, megabytes=total / 1e6, espeak_ng=version, seconds=elapsed)
    summary.update(
        utterances=stats["utterances"],
        recordings=stats["recordings"],
        long_recordings=stats["long"],
        audio_seconds=stats["seconds"],
        speakers=sorted(stats["speakers"]),
        text_documents=stats["text_docs"],
    )
    write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
