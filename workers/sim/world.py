"""The synthetic engine's world: problems, how a simulated reasoning model writes about them, and how any reader
(the policy continuing a path, a PRM, the target judging a draft) reads the state of a path back from its text.

Everything is a deterministic function of the world's ``seed``, the problem and the text, so engines in different
processes (policy, draft, PRM replicas) agree on one world without talking to each other.

**Problems.** A question names its problem with a marker, ``Problem 17 (synthetic)`` (:func:`question` writes
one); the first marker in a prompt is the problem, so a refine prompt that embeds earlier drafts is still about
it. A prompt without a marker is the problem of the CRC32 of its first user line. A problem has a difficulty
``z ~ N(0, 1)``, a gold answer (an integer), a few wrong answers with skewed weights (so that wrong paths'
votes split, unevenly), and a typical number of reasoning steps (longer for harder problems).

**Writing.** A trace is steps separated by the profile's delimiter; reasoning models (``<think>``) close the
reasoning with ``\\n</think>\\n\\n`` and write a final part of a few paragraphs, the last with ``\\boxed{A}``;
models without a reasoning span end their last step with ``\\boxed{A}``. A step is its *nonce* (its first word,
drawn from the call's randomness: seed + sample index + the text so far), words, and a *claim* token
``x_{k}=V.`` whose value is the problem's true value of step k when the step is right. The step's length and
words follow from (problem, k, nonce); whether it is right follows from a uniform ``u`` of (problem, k, track,
nonce) and the writer's per-step error rate ``e``: a step on track goes wrong when ``u < e``, a step off track
recovers when ``u < f``. A path ends after a step with a hazard rising around the problem's step count, centred
``wrong_factor`` times later for a path off track (wrong traces are longer). Its answer is the gold when it ended
on track, else one of the problem's wrong answers, chosen by the value of the first wrong claim of the run.
A writer of accuracy A gets, per problem, ``a = Phi(alpha - beta z)`` (mean A over problems) and the error
rate ``e`` that makes the chain end correct with probability ``a`` (solved numerically, cached).

**Reading.** The state of a path (steps so far, on or off track, the wrong value it is carrying, the part of the
final paragraphs written) is parsed from the text alone: the claims say which steps are right. A step cut
mid-way is continued from its nonce, so a trace generated whole equals the same trace generated step by step or
cut and continued. A reader's *signal* of a step (PRM score, the target's log-probabilities) is
``x = +-d/2 + noise``, ``d = sqrt(2) Phi^-1(AUROC)``, noise N(0, 1) deterministic per step text; a step not
finished yet carries ``sqrt(written / length)`` of its evidence, its sign the fate of its nonce for the reader's
reference writer.

**Tokens** are pieces of text: a word with its leading space, a newline, a tag (``<think>``, ``<extra_0>``,
``<|im_start|>``); the simulated model writes in such pieces, so its token counts are exact by construction and
text from elsewhere (questions, the service's own prompts) is counted by the same rule.
"""

from __future__ import annotations

import math
import random
import re
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import NormalDist
from typing import Iterator, Sequence

import numpy as np

from orchestrator.profile import ModelProfile

_N = NormalDist()
_M64 = (1 << 64) - 1

# ------------------------------------------------------------------------------------------ hashing


def mix(*xs: int) -> int:
    """A 64-bit hash of integers: the same in every process (a tuple of ints hashes deterministically, unlike a
    ``str``), finished with splitmix64's mixer so that its low bits are as random as its high ones."""
    h = hash(xs) & _M64
    h = (h ^ (h >> 31)) * 0xBF58476D1CE4E5B9 & _M64
    h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _M64
    return h ^ (h >> 31)


def unit(*xs: int) -> float:
    """A uniform number in [0, 1) from integers."""
    return (mix(*xs) >> 11) / float(1 << 53)


def gauss(*xs: int) -> float:
    """A standard normal number from integers (inverse CDF of :func:`unit`)."""
    return _N.inv_cdf(min(max(unit(*xs), 1e-12), 1 - 1e-12))


def crc(text: str, start: int = 0) -> int:
    """CRC32 of ``text`` (continuing ``start``): the hash of a text so far, cheap to extend piece by piece."""
    return zlib.crc32(text.encode(), start)


# Salts keep the decisions drawn from one step independent of each other.
_TRUTH, _FATE, _END, _LEN, _WORDS, _NONCE, _WRONG, _FINAL, _NOISE, _PROBLEM = range(1, 11)

# ------------------------------------------------------------------------------------------ tokens

# Special tags first, then a newline, then a word with at most one leading space, then whatever is left.
TOKEN = re.compile(r"<extra_\d+>|</?think>|<\|[^|\s]{1,24}\|>|\n| ?[^\s<]+| ?<|[^\S\n]+")


def pieces(text: str) -> list[str]:
    """The tokens of ``text`` as strings (see the module docstring)."""
    return TOKEN.findall(text)


def count(text: str) -> int:
    return len(TOKEN.findall(text))


_IDS: dict[str, int] = {}


def piece_id(p: str) -> int:
    """A piece's token id: a CRC32 of its text (cached: the simulated model writes from a small vocabulary)."""
    i = _IDS.get(p)
    if i is None:
        i = zlib.crc32(p.encode()) & 0x7FFFFFFF
        if len(_IDS) < 500_000:
            _IDS[p] = i
    return i


def ids_of(ps: Sequence[str]) -> list[int]:
    """Token ids of pieces (see :func:`piece_id`)."""
    out = list(map(_IDS.get, ps))
    if None in out:
        out = [i if i is not None else piece_id(p) for i, p in zip(out, ps)]
    return out  # type: ignore[return-value]


_LINES: dict[str, tuple[int, ...]] = {}
_NEWLINE = zlib.crc32(b"\n") & 0x7FFFFFFF


def token_ids(text: str) -> list[int]:
    """Token ids of ``text``. No token spans a newline, so the ids are those of its lines joined by the newline's;
    lines are cached (prompts of one search repeat the same steps call after call)."""
    out: list[int] = []
    lines = _LINES
    for i, line in enumerate(text.split("\n")):
        if i:
            out.append(_NEWLINE)
        if not line:
            continue
        ids = lines.get(line)
        if ids is None:
            ids = tuple(ids_of(TOKEN.findall(line)))
            if len(lines) > 200_000:
                lines.clear()
            lines[line] = ids
        out.extend(ids)
    return out


def _vocabulary() -> tuple[str, ...]:
    onsets = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh", "tr", "pl"]
    vowels = ["a", "e", "i", "o", "u", "ai"]
    syllables = [o + v for o in onsets for v in vowels]
    rng = random.Random(20240601)
    words = sorted({rng.choice(syllables) + rng.choice(syllables) + rng.choice(["", "n", "r", "s", "l"]) for _ in range(6000)})
    return tuple(words[:2048])


VOCAB = _vocabulary()
NONCES = tuple(w.capitalize() for w in VOCAB)
CLAIM = re.compile(r"x_\{(\d+)\}=(\d+)\.")
QUESTION_MARKER = re.compile(r"Problem (\d+) \(synthetic\)")
CHAT_OPEN, CHAT_CLOSE = "<|im_start|>", "<|im_end|>"
ASSISTANT = f"{CHAT_OPEN}assistant\n"

# ------------------------------------------------------------------------------------------ presets


@dataclass(frozen=True)
class Writing:
    """How a simulated model writes: lengths in tokens, steps, how wrong paths differ. ``steps`` is the median
    (over problems) of a correct trace's reasoning steps, spread ``steps_sigma`` (log scale, tied to difficulty);
    a step is ``step_tokens`` words (median, log-normal ``step_sigma``) plus its delimiter; an off-track path's
    ending hazard is centred ``wrong_factor`` times later; ``recovery`` is the chance per step that an
    off-track path gets back on track; a final part of ``final_paragraphs`` paragraphs of ``final_tokens``
    follows the reasoning (none: the last step holds the answer); ``difficulty`` is beta, the spread of
    per-problem accuracy; ``max_factor`` caps a trace at that many times its off-track step count."""

    name: str
    steps: float
    steps_sigma: float
    step_tokens: float
    step_sigma: float
    wrong_factor: float
    hazard_width: float = 0.15
    recovery: float = 0.03
    final_paragraphs: tuple[int, int] = (0, 0)
    final_tokens: float = 40.0
    difficulty: float = 1.5
    wrong_answers: int = 4
    max_factor: float = 2.0


# R1-Distill on MATH-500, as the issue describes it: a few hundred to 16k tokens, 50-200 steps (blank-line
# paragraphs), wrong traces markedly longer; a short final part after </think> with the boxed answer.
R1 = Writing("r1", steps=120, steps_sigma=0.55, step_tokens=30, step_sigma=0.7, wrong_factor=2.5, recovery=0.03, final_paragraphs=(2, 5), final_tokens=45)
# Qwen2.5-Math-Instruct: 300-700 tokens, a handful of steps, the last one boxing the answer.
QWEN_MATH = Writing("qwen-math", steps=9, steps_sigma=0.25, step_tokens=45, step_sigma=0.35, wrong_factor=1.3, hazard_width=0.12, recovery=0.02)
WRITINGS = {w.name: w for w in (R1, QWEN_MATH)}

# ------------------------------------------------------------------------------------------ problems


@dataclass(frozen=True)
class Facts:
    """One problem: its key, difficulty ``z``, gold answer, wrong answers with their weights, and the step
    count of its correct traces ``m`` (the ending hazard's centre)."""

    key: int
    z: float
    gold: str
    wrong: tuple[str, ...]
    weights: tuple[float, ...]
    m: float

    def wrong_answer(self, value: int) -> str:
        """The wrong answer a run that first went wrong with claim ``value`` heads to."""
        u, acc = unit(self.key, value, _WRONG), 0.0
        for answer, w in zip(self.wrong, self.weights):
            acc += w
            if u < acc:
                return answer
        return self.wrong[-1]


@dataclass
class PathState:
    """A path as its text says: ``k`` reasoning steps complete, on track or not, the first wrong value of the
    current off-track run, the final paragraphs complete (-1 while reasoning) and how many there will be (when
    the first is written), the tokens of the segment cut mid-way, and the CRC32 of the response so far."""

    k: int = 0
    on_track: bool = True
    run_value: int | None = None
    finals: int = -1
    final_count: int | None = None
    partial: list[str] = field(default_factory=list)
    crc: int = 0
    done: bool = False  # the text already holds the answer's end (nothing more would be written)

    def answer(self, facts: Facts) -> str:
        return facts.gold if self.on_track else facts.wrong_answer(self.run_value or 0)

    def after_claim(self, good: bool, value: int) -> None:
        if good:
            self.on_track, self.run_value = True, None
        else:
            if self.on_track:
                self.run_value = value
            self.on_track = False


@dataclass(frozen=True)
class Segment:
    """Tokens the model writes next (one step or final paragraph, its separator included), whether the trace
    ends after them (EOS), and whether the step was right (None for a final paragraph)."""

    tokens: list[str]
    eos: bool = False
    good: bool | None = None


def question(index: int, *, words: int = 40, seed: int = 0) -> str:
    """The text of synthetic problem ``index``: its marker, then filler words (a question's length)."""
    rng = random.Random(mix(seed, index, _PROBLEM))
    return f"Problem {index} (synthetic): " + " ".join(rng.choices(VOCAB, k=words)) + "?"


class World:
    """The problems of ``seed`` and the writing style ``writing``, in the text format of ``profile``."""

    def __init__(self, writing: Writing, profile: ModelProfile, *, seed: int = 0) -> None:
        self.writing = writing
        self.profile = profile
        self.seed = seed
        self.delimiter = profile.step_delimiter
        self.think = profile.reasoning == "think"
        self.close_tokens = pieces(f"\n{profile.think_close}\n\n") if self.think else []
        self.delimiter_tokens = pieces(profile.step_delimiter)
        self._ideas: dict[tuple[int, int], tuple[str, ...]] = {}
        self._noise: dict[tuple[int, int, str, int], float] = {}
        self._rates: dict[tuple[int, float], tuple[float, float]] = {}
        self._facts = lru_cache(maxsize=4096)(self._make_facts)

    # -------------------------------------------------------------------------------------- problems

    def key_of(self, prompt: str) -> int:
        """The problem a prompt is about: its first marker, else the CRC32 of its first user line."""
        m = QUESTION_MARKER.search(prompt)
        if m:
            return int(m.group(1))
        body = prompt.split(f"{CHAT_OPEN}user\n", 1)[-1]
        line = next((ln for ln in body.split("\n") if ln.strip() and not ln.startswith(CHAT_OPEN)), body)
        return (1 << 40) + crc(line.strip())

    def facts(self, key: int) -> Facts:
        return self._facts(key)

    def _make_facts(self, key: int) -> Facts:
        w = self.writing
        z = gauss(self.seed, key, _PROBLEM)
        gold = 100 + mix(self.seed, key, _TRUTH) % 900
        wrong: list[str] = []
        j = 1
        while len(wrong) < w.wrong_answers:
            cand = 100 + mix(self.seed, key, _WRONG, j) % 900
            j += 1
            if cand != gold and str(cand) not in wrong:
                wrong.append(str(cand))
        # Skewed: the first wrong answer draws most wrong paths on some problems (votes converge on it), few on others.
        skew = 0.3 + 1.5 * unit(self.seed, key, _WRONG)
        raw = [math.exp(-skew * i) for i in range(len(wrong))]
        weights = tuple(r / sum(raw) for r in raw)
        m = w.steps * math.exp(w.steps_sigma * (0.7 * z + 0.71 * gauss(self.seed, key, _LEN)))
        return Facts(key=key, z=z, gold=str(gold), wrong=tuple(wrong), weights=weights, m=max(2.0, m))

    def gold(self, text: str) -> str:
        """The gold answer of the problem ``text`` (a question or a prompt) is about."""
        return self.facts(self.key_of(text)).gold

    def accuracy(self, key: int, accuracy: float) -> float:
        """The chance that a writer of mean accuracy ``accuracy`` ends a trace of problem ``key`` right."""
        beta = self.writing.difficulty
        alpha = _N.inv_cdf(min(max(accuracy, 1e-6), 1 - 1e-6)) * math.sqrt(1 + beta * beta)
        return _N.cdf(alpha - beta * self.facts(key).z)

    def truth(self, key: int, k: int) -> int:
        return 1000 + mix(self.seed, key, k, _TRUTH) % 9000

    def kmax(self, facts: Facts) -> int:
        return max(4, math.ceil(self.writing.max_factor * self.writing.wrong_factor * facts.m))

    def hazard(self, facts: Facts, k: int, on_track: bool) -> float:
        """The chance that a path ends after its k-th step (1-based), on or off track after it."""
        centre = facts.m if on_track else self.writing.wrong_factor * facts.m
        width = self.writing.hazard_width * centre + 0.5
        return 1.0 / (1.0 + math.exp(-(k - centre) / width))

    def rates(self, key: int, accuracy: float) -> tuple[float, float]:
        """(e, f): the per-step error and recovery rates of a writer of mean accuracy ``accuracy`` on ``key``."""
        cached = self._rates.get((key, accuracy))
        if cached is None:
            facts = self.facts(key)
            f = self.writing.recovery
            grid = np.geomspace(1e-7, 0.95, 120)
            curve = self._chain_accuracy(facts, grid, f)
            target = self.accuracy(key, accuracy)
            # The curve falls with e; interpolate in log e.
            if target >= curve[0]:
                e = float(grid[0])
            elif target <= curve[-1]:
                e = float(grid[-1])
            else:
                e = float(np.exp(np.interp(-target, -curve, np.log(grid))))
            cached = self._rates[(key, accuracy)] = (e, f)
        return cached

    def _chain_accuracy(self, facts: Facts, e: np.ndarray, f: float) -> np.ndarray:
        """P(the trace ends on track) for each error rate in ``e`` (the two-state chain, exactly)."""
        on, off, right = np.ones_like(e), np.zeros_like(e), np.zeros_like(e)
        kmax = self.kmax(facts)
        for k in range(1, kmax + 1):
            new_on = on * (1 - e) + off * f
            new_off = on * e + off * (1 - f)
            if k == kmax:
                right += new_on
                break
            h_on, h_off = self.hazard(facts, k, True), self.hazard(facts, k, False)
            right += new_on * h_on
            on, off = new_on * (1 - h_on), new_off * (1 - h_off)
        return right

    def length_quantiles(self, key: int, accuracy: float, qs: Sequence[float], *, samples: int = 256) -> list[float]:
        """Quantiles of a whole trace's generated tokens (EOS included) for a writer of ``accuracy`` on ``key``,
        by Monte Carlo of the same chain and length laws the writer follows (not of its exact draws)."""
        facts, w = self.facts(key), self.writing
        e, f = self.rates(key, accuracy)
        rng = np.random.default_rng(mix(self.seed, key, 77) & 0xFFFFFFFF)
        kmax = self.kmax(facts)
        on = np.ones(samples, dtype=bool)
        alive = np.ones(samples, dtype=bool)
        tokens = np.zeros(samples)
        for k in range(1, kmax + 1):
            u = rng.random(samples)
            on = np.where(on, u >= e, u < f)
            step = np.clip(np.round(w.step_tokens * np.exp(w.step_sigma * rng.standard_normal(samples))), 4, 8 * w.step_tokens) + 2
            tokens += np.where(alive, step, 0)
            h = np.where(on, self.hazard(facts, k, True), self.hazard(facts, k, False))
            ends = alive & ((rng.random(samples) < h) | (k == kmax))
            alive &= ~ends
            if not alive.any():
                break
        lo, hi = w.final_paragraphs
        if hi:
            paras = rng.integers(lo, hi + 1, samples)
            tokens += paras * (w.final_tokens + 7) + len(self.close_tokens)
        else:
            tokens += 6
        return [float(np.quantile(tokens + 1, q)) for q in qs]

    # -------------------------------------------------------------------------------------- reading

    def response(self, prompt: str) -> str:
        """The model's own part of a generation prompt: after the last assistant turn (and its opening think
        tag), else after a lone opening think tag; a raw prompt without either starts a fresh solution."""
        at = prompt.rfind(ASSISTANT)
        if at >= 0:
            rest = prompt[at + len(ASSISTANT) :]
        elif self.think and prompt.rfind(self.profile.think_open) >= 0:
            rest = prompt[prompt.rfind(self.profile.think_open) :]
        else:
            return ""
        if self.think and rest.startswith(self.profile.think_open):
            rest = rest[len(self.profile.think_open) :].lstrip("\n")
        return rest

    def parse(self, key: int, response: str) -> PathState:
        """The state of a path from its text (see the module docstring)."""
        st = PathState(crc=crc(response))
        parts = response.split(self.delimiter)
        close = self.profile.think_close if self.think else None
        for seg in parts[:-1]:
            if st.finals < 0:
                st.k += 1
                self._read_claim(key, seg, st)
                if close is not None and close in seg:
                    st.finals = 0
            else:
                if st.finals == 0:
                    st.final_count = self._final_count(key, _first_word(seg))
                st.finals += 1
        st.partial = pieces(parts[-1])
        if st.finals >= 0 and st.final_count is not None and st.finals >= st.final_count:
            st.done = True
        return st

    def _read_claim(self, key: int, text: str, st: PathState) -> None:
        m = None
        for m in CLAIM.finditer(text):
            pass
        if m is not None:
            k, value = int(m.group(1)), int(m.group(2))
            st.after_claim(value == self.truth(key, k), value)

    def _final_count(self, key: int, nonce: str) -> int:
        lo, hi = self.writing.final_paragraphs
        return lo + mix(self.seed, key, crc(nonce), _FINAL) % (hi - lo + 1) if hi else 0

    # -------------------------------------------------------------------------------------- writing

    def step_length(self, key: int, k: int, nonce: str) -> int:
        """Words of reasoning step ``k`` with ``nonce`` (the claim included, the separator not)."""
        w = self.writing
        g = gauss(self.seed, key, k, crc(nonce), _LEN)
        return int(min(max(round(w.step_tokens * math.exp(w.step_sigma * g)), 4), 8 * w.step_tokens))

    def fate(self, key: int, k: int, on_track: bool, nonce: str) -> float:
        """The uniform ``u`` that decides whether step ``k`` is right (see the module docstring)."""
        return unit(self.seed, key, k, int(on_track), crc(nonce), _FATE)

    def _idea(self, key: int, k: int) -> tuple[str, ...]:
        """The words of step ``k``'s idea: steps at one depth of a problem share most of them, as paraphrases do."""
        cached = self._ideas.get((key, k))
        if cached is None:
            rng = random.Random(mix(self.seed, key, k, _WORDS))
            cached = tuple(" " + VOCAB[rng.getrandbits(11)] for _ in range(int(8 * self.writing.step_tokens)))
            if len(self._ideas) > 200_000:
                self._ideas.clear()
            self._ideas[(key, k)] = cached
        return cached

    def step(self, facts: Facts, st: PathState, nonce: str, rates: tuple[float, float]) -> Segment:
        """Reasoning step ``st.k`` written with ``nonce`` from state ``st``, by a writer of ``rates``."""
        key, k = facts.key, st.k
        e, f = rates
        nc = crc(nonce)
        length = self.step_length(key, k, nonce)
        words = list(self._idea(key, k)[: length - 2])
        rng = random.Random(mix(self.seed, key, k, nc, _WORDS))
        for i in rng.choices(range(len(words)), k=len(words) // 4) if words else ():
            words[i] = " " + VOCAB[rng.getrandbits(11)]
        u = self.fate(key, k, st.on_track, nonce)
        good = u >= e if st.on_track else u < f
        truth = self.truth(key, k)
        value = truth if good else truth + 1 + nc % 499
        tokens = [nonce, *words, f" x_{{{k}}}={value}."]
        end = k + 1 >= self.kmax(facts) or unit(self.seed, key, k, nc, _END) < self.hazard(facts, k + 1, good)
        if not end:
            return Segment(tokens + self.delimiter_tokens, good=good)
        if self.think:
            return Segment(tokens + self.close_tokens, good=good)
        probe = PathState(on_track=st.on_track, run_value=st.run_value)
        probe.after_claim(good, value)
        return Segment(tokens + [" Therefore,", " the", " final", " answer", " is", f" $\\boxed{{{probe.answer(facts)}}}$."], eos=True, good=good)

    def final(self, facts: Facts, st: PathState, nonce: str) -> Segment:
        """Final paragraph ``st.finals`` (after the reasoning), written with ``nonce``."""
        key, j = facts.key, st.finals
        total = st.final_count if st.final_count is not None else self._final_count(key, nonce)
        answer = st.answer(facts)
        g = gauss(self.seed, key, j, crc(nonce), _FINAL)
        length = int(min(max(round(self.writing.final_tokens * math.exp(0.4 * g)), 4), 4 * self.writing.final_tokens))
        rng = random.Random(mix(self.seed, key, j, crc(nonce), _FINAL))
        words = [" " + x for x in rng.choices(VOCAB, k=length)]
        if j + 1 >= total:
            return Segment([nonce] + words + [" so", " the", " answer", " is", f" $\\boxed{{{answer}}}$."], eos=True)
        return Segment([nonce] + words + [" so", " the", " answer", " is", f" {answer}."] + self.delimiter_tokens)

    def continuation(self, facts: Facts, st: PathState, rates: tuple[float, float], sample_seed: int) -> Iterator[Segment]:
        """What a writer of ``rates`` writes after the text ``st`` was parsed from, segment by segment: the rest
        of the segment cut mid-way (its nonce is its first word), then fresh ones, to the end of the trace.
        Fresh nonces come from ``sample_seed`` and the text so far. ``st`` is advanced as segments go, from the
        text written (so that it stays what :meth:`parse` would read)."""
        if st.done:
            return
        h = st.crc
        partial = st.partial
        while True:
            nonce = (partial[0].strip() or NONCES[0]) if partial else NONCES[mix(sample_seed, facts.key, h, _NONCE) % len(NONCES)]
            reasoning = st.finals < 0
            if reasoning:
                seg = self.step(facts, st, nonce, rates)
            else:
                if st.finals == 0 and st.final_count is None:
                    st.final_count = self._final_count(facts.key, nonce)
                seg = self.final(facts, st, nonce)
            keep = self._rest(seg, partial)
            text = "".join(partial) + "".join(keep)
            if reasoning:
                st.k += 1
                self._read_claim(facts.key, text, st)
                if self.think and self.profile.think_close in text:
                    st.finals = 0
            else:
                st.finals += 1
            h = crc("".join(keep), h)
            partial = []
            yield Segment(keep, eos=seg.eos, good=seg.good)
            if seg.eos:
                return

    def _rest(self, seg: Segment, partial: list[str]) -> list[str]:
        """What is left to write of ``seg`` when the text already holds ``partial`` of it. A cut of this very
        segment continues exactly; text from elsewhere (an opening phrase, another writer's claim) keeps its
        words, and the segment's claim and ending follow (only its ending, when the text made a claim already)."""
        if not partial:
            return seg.tokens
        n = len(partial)
        if seg.tokens[:n] == partial:
            return seg.tokens[n:]
        tail = next((i for i, t in enumerate(seg.tokens) if CLAIM.search(t) or t == " so"), len(seg.tokens) - 1)
        if any(CLAIM.search(t) for t in partial):
            tail += 1
        rest = seg.tokens[max(min(n, tail), 0) :] if n < tail else seg.tokens[tail:]
        if self.think and any(t == self.profile.think_close for t in partial):
            # The text closed the reasoning already: what follows the close is the paragraph break.
            return pieces(self.delimiter)[len(partial) - 1 - max(i for i, t in enumerate(partial) if t == self.profile.think_close) :]
        return rest

    # -------------------------------------------------------------------------------------- signals

    def labels(self, key: int, steps: Sequence[str], *, reference: tuple[float, float], last_partial: bool) -> list[tuple[float, float]]:
        """Per step of a solution (as a PRM cuts it: stripped texts, reasoning then final paragraphs), the sign
        of its truth (+1 right, -1 wrong) and the share of its evidence written (1 for a finished step). The
        last step, when ``last_partial``, is judged by the fate its nonce has for a writer of ``reference``."""
        st = PathState()
        out: list[tuple[float, float]] = []
        gold = self.facts(key).gold
        for i, text in enumerate(steps):
            said = _said(text)
            if said is not None and said[0] == "answer":
                out.append((1.0 if said[1] == gold else -1.0, 1.0))
                continue
            if said is not None:
                k, value = said[1], said[2]
                good = value == self.truth(key, k)
                st.after_claim(good, value)
                st.k = k + 1
                out.append((1.0 if good else -1.0, 1.0))
                continue
            if i == len(steps) - 1 and last_partial and text.strip():
                nonce = _first_word(text)
                length = self.step_length(key, st.k, nonce)
                u = self.fate(key, st.k, st.on_track, nonce)
                e, f = reference
                good = u >= e if st.on_track else u < f
                out.append((1.0 if good else -1.0, min(1.0, count(text) / max(length, 1))))
                continue
            out.append((1.0 if st.on_track else -1.0, 0.5))  # no claim: the path's state is all there is to read
        return out

    def signal(self, key: int, text: str, sign: float, share: float, *, auroc: float, salt: int) -> float:
        """A reader's evidence about one step: ``sign * d/2 * sqrt(share) + noise`` (see the module docstring)."""
        d = _separation(auroc)
        noise_key = (self.seed, key, text, salt)
        noise = self._noise.get(noise_key)
        if noise is None:
            noise = gauss(self.seed, key, crc(text.strip()), salt, _NOISE)
            if len(self._noise) > 200_000:
                self._noise.clear()
            self._noise[noise_key] = noise
        return sign * d / 2 * math.sqrt(share) + noise


@lru_cache(maxsize=64)
def _separation(auroc: float) -> float:
    """d' of an equal-variance Gaussian reader with this AUROC: sqrt(2) Phi^-1(AUROC)."""
    return math.sqrt(2.0) * _N.inv_cdf(min(max(auroc, 0.5), 0.9999))


@lru_cache(maxsize=200_000)
def _said(text: str) -> tuple[str, int | str, int] | None:
    """What a step says: ("answer", A, 0) for a final answer (boxed, or a final paragraph's "so the answer is"),
    ("claim", k, V) for its last claim, None for neither."""
    m = None
    for m in CLAIM.finditer(text):
        pass
    boxed = _BOXED.search(text) or _SAYS.search(text)
    if boxed is not None and (m is None or boxed.start() > m.end()):
        return ("answer", boxed.group(1), 0)
    if m is not None:
        return ("claim", int(m.group(1)), int(m.group(2)))
    return None


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_SAYS = re.compile(r" so the answer is (\d+)\.")


def _first_word(text: str) -> str:
    ps = pieces(text.lstrip())
    return ps[0].strip() if ps else ""


def _claim_value(tokens: list[str]) -> int | None:
    for t in reversed(tokens):
        m = CLAIM.search(t)
        if m:
            return int(m.group(2))
    return None
