"""``sdd-bench judge`` and ``sdd-bench agreement``: re-judge stored generations, compare judges.

Both work on a finished ``generate`` artifact (its directory, or ``generate/<key>`` inside
``--workdir``); each judge's verdicts are their own cached artifact, so ``agreement`` after
``judge`` costs nothing but reading files, and nothing is ever regenerated.
"""
from __future__ import annotations

import json

from sdd_bench.harness.errors import ConfigError, SddBenchError

JUDGE_EXAMPLES = """examples:
  sdd-bench judge --generations generate/<key> --judges keyword,harm-clf
  OPENAI_API_KEY=... sdd-bench judge --generations generate/<key> --judges rubric --judge-model gpt-4o-2024-08-06
  sdd-bench judge --generations generate/<key> --judges rubric --judge-base-url http://127.0.0.1:8000/v1 \\
      --judge-model smollm2 --judge-opt rubric.concurrency=1
  sdd-bench agreement --generations generate/<key> --judges harm-clf,keyword,rubric --judge-base-url ..."""


def _add_judge_opts(p, add_common) -> None:
    p.add_argument("--generations", required=True, help="generation artifact: a path, or generate/<key> in --workdir")
    p.add_argument("--judge-model", help="model for API judges (rubric): name on the server")
    p.add_argument("--judge-base-url", help="OpenAI-compatible base URL for API judges, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-opt", action="append", default=[], metavar="JUDGE.KEY=VALUE",
                   help="judge config override, e.g. rubric.concurrency=2 or harm-clf.threshold=0.6")
    p.add_argument("--json", dest="json_out", help="also write the results as JSON to this file")
    add_common(p)


def register_cli(sub, add_common) -> dict:
    import argparse
    p = sub.add_parser("judge", help="judge stored generations with one or more judges (cached verdict artifacts)",
                       epilog=JUDGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--judges", default="keyword", help="comma-separated judges (`sdd-bench ls judges`)")
    _add_judge_opts(p, add_common)
    p = sub.add_parser("agreement", help="agreement %%, Cohen's kappa and confusion table between judges",
                       epilog=JUDGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--judges", required=True, help="two or more comma-separated judges (every pair is compared)")
    _add_judge_opts(p, add_common)
    return {"judge": cmd_judge, "agreement": cmd_agreement}


def judge_overrides(names: list[str], judge_model: str | None, base_url: str | None,
                    opts: list[str]) -> dict[str, dict]:
    """Per-judge config overrides from the CLI flags (canonical judge names as keys)."""
    from sdd_bench.harness.config import parse_override
    from sdd_bench.harness.registry import JUDGES
    out: dict[str, dict] = {n: {} for n in names}
    for n in names:
        fields = getattr(JUDGES.get(n).Config, "__dataclass_fields__", {})
        if judge_model and "base_url" in fields:  # API judges only; guards take their hub id via --judge-opt
            out[n]["model"] = judge_model
        if base_url and "base_url" in fields:
            out[n]["base_url"] = base_url
    for o in opts:
        head, sep, _ = o.partition("=")
        jn, dot, key = head.partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"--judge-opt {o!r} must look like JUDGE.KEY=VALUE (e.g. rubric.concurrency=2).")
        cj = JUDGES.canonical(jn.strip())
        if cj not in out:
            raise ConfigError(f"--judge-opt {o!r} names judge {jn!r}, which is not in --judges ({', '.join(names)}).")
        k, v = parse_override(f"{key}={o.partition('=')[2]}")
        out[cj][k] = v
    if (judge_model or base_url) and not any("base_url" in getattr(JUDGES.get(n).Config, "__dataclass_fields__", {})
                                             for n in names):
        raise ConfigError("--judge-model/--judge-base-url apply to API judges (rubric), but none is in --judges.")
    return out


def _names(text: str) -> list[str]:
    from sdd_bench.harness.registry import JUDGES
    names = []
    for n in (x.strip() for x in text.split(",")):
        if n:
            c = JUDGES.canonical(n)
            if c not in names:
                names.append(c)
    if not names:
        raise ConfigError("--judges is empty; give comma-separated judge names (`sdd-bench ls judges`).")
    return names


def run_judges(args, names: list[str]) -> dict:
    """Judge the artifact with every name; returns name → (artifact, hit, verdicts, summary)."""
    from sdd_bench.harness.store import Store
    from sdd_bench.judges.base import make_judge
    from sdd_bench.judges.stage import judge_stage, load_summary, load_verdicts
    store = Store(args.workdir)
    store.check_no_legacy()
    gen = store.resolve(args.generations)
    if not (gen.path / "generations.jsonl").is_file():
        raise SddBenchError(f"{args.generations!r} is a {gen.stage!r} artifact without generations.jsonl; "
                            f"pass a generate artifact (`sdd-bench cache ls` lists them).")
    overrides = judge_overrides(names, args.judge_model, args.judge_base_url, args.judge_opt)
    device = "cpu" if args.device == "auto" else args.device
    out = {}
    for n in names:
        j = make_judge(n, overrides[n], store=store, device=device)
        art, hit = judge_stage(store, gen, n, judge=j)
        out[n] = (art, hit, load_verdicts(art), load_summary(art))
    return out


def cmd_judge(args) -> int:
    from sdd_bench.harness.metrics import aggregate
    from sdd_bench.harness.registry import JUDGES
    names = _names(args.judges)
    res = run_judges(args, names)
    report = {}
    for n, (art, hit, vs, summ) in res.items():
        mets = {m: aggregate(vs, how) for m, (how, _) in JUDGES.get(n).metrics.items()}
        report[n] = {"artifact": str(art.path), "cache_hit": hit, "n": summ["n"], "invalid": summ["invalid"],
                     "metrics": mets, "accounting": summ.get("accounting")}
        print(f"{n}: {'cache hit' if hit else 'judged'} {art.path}  n={summ['n']} invalid={summ['invalid']}")
        for m, a in mets.items():
            print(f"    {m:26s} {a['value']:.3f}  CI95 [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]  (n={a['n']})")
        acc = summ.get("accounting")
        if acc:
            keep = {k: acc[k] for k in ("requests", "retries", "parse_retries", "invalid_reasons", "prompt_tokens",
                                        "completion_tokens", "cost_usd", "heldout", "threshold") if k in acc}
            if "heldout" in keep:
                h = keep.pop("heldout")
                keep["heldout"] = {k: round(h[k], 4) for k in ("accuracy", "f1", "precision", "recall")}
            print(f"    accounting: {json.dumps(keep, default=str)}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return 0


def cmd_agreement(args) -> int:
    from .agreement import format_table, judge_agreement
    names = _names(args.judges)
    if len(names) < 2:
        raise ConfigError(f"agreement needs at least two judges, got {names}.")
    res = run_judges(args, names)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            r = judge_agreement(a, res[a][2], b, res[b][2])
            rows.append(r)
            print(format_table(r))
            print()
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0
