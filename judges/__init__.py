"""Judges: keyword refusal, coherence, relevance, rubric (OpenAI-compatible), harm classifier, guards."""
from sdd_bench.harness.registry import DATASETS, JUDGES

JUDGES.lazy("keyword", "sdd_bench.judges.keyword:KeywordRefusal",
            "refusal if a refusal prefix occurs in the response (Qi et al. 2023 / JailbreakBench lists)")
JUDGES.lazy("coherence", "sdd_bench.judges.coherence:Coherence",
            "degenerate output (repetition, empty, non-text) → incoherent (Booster's HS+ idea)")
JUDGES.lazy("relevance", "sdd_bench.judges.relevance:Relevance",
            "all-MiniLM-L6-v2 cosine similarity of prompt and response (SDD answers: fluent but irrelevant)")
JUDGES.lazy("reject-sentence", "sdd_bench.judges.rejection:RejectionSentence",
            "explicit rejection: the response states SDD-reject's fixed sentence (SDD paper §5; Figure 3)")
JUDGES.lazy("rubric", "sdd_bench.judges.rubric:RubricJudge",
            "Qi et al. 2023 1-5 harmfulness rubric over any OpenAI-compatible API (HS, HR, explicit rejection)",
            aliases=("gpt4",))
JUDGES.lazy("harm-clf", "sdd_bench.judges.harm_clf:HarmClassifier",
            "local CPU harm classifier v1 (the leaderboard's): MiniLM embeddings of prompt+response, logistic head "
            "trained on BeaverTails judge part")
JUDGES.lazy("harm-clf-v2", "sdd_bench.judges.harm_clf_v2:HarmClassifierV2",
            "harm-clf v2: no defense-pool training data, lexical features beyond the refusal opening, threshold "
            "chosen by cross-validation on human-labelled rows (issue 41)")
JUDGES.lazy("beaverdam", "sdd_bench.judges.guards:BeaverDam",
            "PKU-Alignment/beaver-dam-7b moderation (14 categories, flagged if max prob > 0.5; GPU + hub)")
JUDGES.lazy("llamaguard", "sdd_bench.judges.guards:LlamaGuard",
            "meta-llama/Llama-Guard-3-8B safe/unsafe with categories (GPU + hub)")
JUDGES.lazy("harmbench-cls", "sdd_bench.judges.guards:HarmBenchClassifier",
            "cais/HarmBench-Llama-2-13b-cls yes/no behavior classifier (GPU + hub)")
# harm-clf v1's held-out split as a judge-eval set (judges/harm_clf.py), so that the core's data module needs no judge
DATASETS.lazy("beavertails-judge-heldout", "sdd_bench.judges.harm_clf:HELDOUT_DATASET",
              "BeaverTails judge-partition pairs (human is_safe) that harm-clf v1 held out (its 20% prompt split, "
              "seed 0) and harm-clf-v2 never trains or tunes on")
