"""A scripted engine for unit tests of strategy logic: solutions written line by line, words as tokens.

A step line stops on the call's stop string (its ``stop_reason``), the ``Answer`` line ends the trace (EOS:
``stop_reason`` None), as the bundled models write."""

from __future__ import annotations

from orchestrator.budget import Budget, BudgetMeter
from orchestrator.context import StrategyContext
from orchestrator.tally import Tally
from orchestrator.toolbox import Toolbox
from orchestrator.types import Completion, Generation, Usage
from workers.token_pool import TokenPool
from orchestrator.profile import BUNDLED
from verifiers.answers import verifier_for


class StepEngine:
    """The prompt is ``q\\n`` plus the lines written so far. Completion j of a call writes the next line:
    ``sD-good`` when j is even, ``sD-bad`` when odd (D: lines so far); after ``depth`` lines it writes
    ``Answer: A`` where A counts the good lines, then EOS. Every line costs 2 tokens; every call is recorded."""

    def __init__(self, depth: int = 3) -> None:
        self.depth = depth
        self.calls: list = []

    async def generate(self, role, spec):
        self.calls.append(spec)
        prompt = spec.prompt
        lines = [ln for ln in prompt.split("\n")[1:] if ln]
        outs = []
        for j in range(spec.n):
            if len(lines) >= self.depth or "Workspace" in prompt or "Draft" in prompt:
                text, reason = f"Answer: {sum('good' in ln for ln in lines) + (j % 2)}", None
            else:
                text, reason = f"s{len(lines)}-{'good' if j % 2 == 0 else 'bad'}", delimiter_stop(spec)
            outs.append(Completion(text, 2, "stop", stop_reason=reason))
        return metered(spec, Generation(tuple(outs), Usage(prompt_tokens=len(prompt.split()), completion_tokens=2 * spec.n), worker="scripted-0"))

    async def tokenize(self, role, text):
        return text.split()

    async def render_chat(self, role, messages):
        return "".join(f"<{m['role']}> {m['content']}\n" for m in messages) + "<assistant>\n"

    async def abort(self, ids):
        pass


def metered(spec, gen):
    """``gen`` as an engine under live budget metering would deliver it: sequences drawn in order from the
    call's ``token_cap`` (the engine's :class:`TokenPool`), a cut one keeping its first words."""
    if spec.token_cap is None:
        return gen
    pool = TokenPool(spec.token_cap - gen.usage.prompt_tokens, spec.n, spec.expected_tokens, spec.length_quantiles)
    ended = set(pool.victims())
    outs = []
    for j, c in enumerate(gen.completions):
        kept = 0 if j in ended else pool.take(j, c.tokens)
        if j in pool.cut:
            c = Completion(" ".join(c.text.split()[:kept]), kept, "length")
        else:
            pool.finished(j)
        outs.append(c)
        ended |= set(pool.victims())
    usage = Usage(gen.usage.prompt_tokens, sum(c.tokens for c in outs), gen.usage.cached_tokens)
    return Generation(tuple(outs), usage, worker=gen.worker, budget_cut=len(pool.cut))


def delimiter_stop(spec):
    """What a step line that ran to its end stopped on: the call's first stop string (EOS without one)."""
    return spec.stop[0] if spec.stop else None


class WordPRM:
    """Step score 0.9 for a line with ``good`` in it, 0.2 otherwise (no engine call)."""

    async def step_scores(self, engine, question, solution):
        return tuple(0.9 if "good" in ln else 0.2 for ln in solution.split("\n") if ln.strip())


def context(engine, *, total_tokens=None, target_model="", profile=None, **tools):
    """A strategy context over ``engine``; ``tools`` are the toolbox's capabilities (step_scorer=, ...).
    ``profile`` (default: the bundled one) also chooses the answer verifier, as the server does."""
    calls = []

    async def sink(call):
        calls.append(call)

    profile = profile or BUNDLED["bundled"]
    toolbox = Toolbox(verifier=tools.pop("verifier", None) or verifier_for(profile), profile=profile, **tools)
    ctx = StrategyContext(engine=engine, tools=toolbox, tally=Tally(sink=sink), meter=BudgetMeter(Budget(total_tokens)), target_model=target_model)
    return ctx, calls


class WordStepEngine(StepEngine):
    """Like :class:`StepEngine`, but a step line is 6 words (``sD-good x x x x x``), ``max_tokens`` is
    honoured (a cut line ends with finish reason ``length``), and a prompt ending mid-line is continued."""

    async def generate(self, role, spec):
        self.calls.append(spec)
        body = spec.prompt.split("\n", 1)[1]
        *done_lines, tail = body.split("\n")
        lines = [ln for ln in done_lines if ln]
        outs, total = [], 0
        for j in range(spec.n):
            if tail:  # continue the line being written
                words = tail.split(" ")
                full = [words[0]] + ["x"] * 5
                todo = full[len(words):]
                text_words = todo[: spec.max_tokens]
                text = "".join(" " + w for w in text_words)
            else:
                if len(lines) >= self.depth:
                    full = ["Answer:", str(sum("good" in ln for ln in lines) + (j % 2))]
                else:
                    full = [f"s{len(lines)}-{'good' if j % 2 == 0 else 'bad'}"] + ["x"] * 5
                text_words = full[: spec.max_tokens]
                todo = full
                text = " ".join(text_words)
            finish = "length" if len(text_words) < len(todo) else "stop"
            reason = None if finish == "length" or full[0] == "Answer:" else delimiter_stop(spec)
            outs.append(Completion(text, len(text_words), finish, stop_reason=reason))
            total += len(text_words)
        return metered(spec, Generation(tuple(outs), Usage(prompt_tokens=len(spec.prompt.split()), completion_tokens=total), worker="scripted-0"))
