"""How far one refine round could take the bundled target, and how far it does.

    python -m training.bench.refine_ceiling [--per-level 60] [--split dev] [--drafts 8]

Issue 2 asks one refine round from a workspace of 8 drafts to beat pass@1 by 10 points. This measures, on
problems of ``--split`` (never the test split the model cards use), what the workspace holds and what the
refiner makes of it:

- ``pass@1`` at temperature 0.8 (the goal's baseline) and greedy; ``maj@8`` and ``pass@8`` of the drafts;
- ``refine@1`` at temperature 0.8 (4 samples per workspace) and greedy;
- two rules that follow the workspace without sampling: at each operation take, among the workspace's lines
  that continue the chain so far, the one most drafts wrote (``follow_count``), or the one the target itself
  finds most likely (``follow_likelihood``: teacher-forced log-probability of the line's result). A chain
  that finds no such line counts as wrong. They say what a refiner that reads the workspace perfectly, and
  copies without sampling noise, would score.

Writes training/bench/results/refine_ceiling.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from orchestrator.config import REPO_ROOT
from tasks import arithmetic as task
from training import measure, tokenizer as tok_mod

RESULTS = Path(__file__).resolve().parent / "results"


def follow(problem: task.Problem, workspace: task.Workspace, score) -> int | None:
    """The answer of the chain that, at each operation, takes the best-scored workspace line continuing it."""
    value = problem.start
    chain: list[str] = []
    for k, (op, operand) in enumerate(problem.ops):
        lhs = f"{value}{op}{operand}="
        lines = [(line, count) for line, count in workspace.steps[k] if line.startswith(lhs)]
        if not lines:
            return None
        line = max(lines, key=lambda lc: score(chain, lc))[0]
        chain.append(line)
        value = int(line[len(lhs):])
    return value


def line_logprob(model, tok, problem: task.Problem, chain: list[str], line: str) -> float:
    """log P(result digits and newline of ``line`` | question, chain so far, line up to its '=')."""
    import torch

    prefix = task.prompt_for(problem.question) + "".join(c + "\n" for c in chain) + line[: line.index("=") + 1]
    ids = tok.encode(prefix + line[line.index("=") + 1 :] + "\n").ids
    start = len(tok.encode(prefix).ids)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
    return float(sum(logp[i - 1, ids[i]] for i in range(start, len(ids))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-level", type=int, default=60, help="Problems per difficulty level.")
    ap.add_argument("--split", default="dev", choices=["train", "dev"])
    ap.add_argument("--drafts", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "target")
    ap.add_argument("--out", type=Path, default=RESULTS / "refine_ceiling.json")
    args = ap.parse_args()

    probs = [p for lv in task.LEVELS for p in task.generate(args.split, args.per_level, seed=args.seed, levels=[lv])]
    prompts = [task.prompt_for(p.question) for p in probs]
    llm = measure.engine(args.model, seed=args.seed)
    drafts = measure.sample(llm, prompts, n=args.drafts)
    greedy = measure.sample(llm, prompts, n=1, temperature=0.0)
    refine_prompts = [task.refine_prompt(p, [s.text for s in g]) for p, g in zip(probs, drafts)]
    refined = measure.sample(llm, refine_prompts, n=4)
    refined_greedy = measure.sample(llm, refine_prompts, n=1, temperature=0.0)
    del llm

    def rate(groups) -> float:
        return float(np.mean([[task.check_answer(p, s.text).correct for s in g] for p, g in zip(probs, groups)]))

    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(2)
    model = LlamaForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    tok = tok_mod.build()
    by_count, by_likelihood, maj = [], [], []
    for p, g in zip(probs, drafts):
        ws = task.distill(p, [s.text for s in g])
        by_count.append(follow(p, ws, lambda chain, lc: lc[1]) == p.answer)
        by_likelihood.append(follow(p, ws, lambda chain, lc, p=p: line_logprob(model, tok, p, chain, lc[0])) == p.answer)
        maj.append(measure.majority([task.extract_answer(s.text) for s in g]) == p.answer)

    pass1 = rate(drafts)
    report = {
        "settings": {**vars(args), "model": str(args.model), "out": str(args.out), "problems": len(probs), "temperature": measure.TEMPERATURE},
        "pass@1": pass1,
        "pass@1_greedy": rate(greedy),
        f"maj@{args.drafts}": float(np.mean(maj)),
        f"pass@{args.drafts}": float(np.mean([any(task.check_answer(p, s.text).correct for s in g) for p, g in zip(probs, drafts)])),
        "refine@1": rate(refined),
        "refine@1_greedy": rate(refined_greedy),
        "follow_count": float(np.mean(by_count)),
        "follow_likelihood": float(np.mean(by_likelihood)),
    }
    report["gains_over_pass@1"] = {k: round(v - pass1, 4) for k, v in report.items() if isinstance(v, float) and k != "pass@1"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "settings"}, indent=2))


if __name__ == "__main__":
    main()
