"""Defenses: one file per method (see each module's docstring for the paper and defaults)."""
from sdd_bench.harness.registry import DEFENSES

from .base import check_defense_class

DEFENSES.set_contract(check_defense_class)  # every registration must fulfil defenses.base.Defense

DEFENSES.lazy("none", "sdd_bench.defenses.none:NoDefense", "no defense: the model as is")
DEFENSES.lazy("refusal-sft", "sdd_bench.defenses.refusal_sft:RefusalSFT",
              "safety SFT on harmful prompts → refusals + benign pairs (the aligned starting point)")
DEFENSES.lazy("sdd", "sdd_bench.defenses.sdd:SDD",
              "Self-Degraded Defense (Chen et al., ACL 2025): harmful prompts → high-quality irrelevant answers")
DEFENSES.lazy("sdd-reject", "sdd_bench.defenses.sdd_reject:SDDReject",
              "SDD with an explicit refusal sentence before each irrelevant answer (Chen et al., ACL 2025)")
DEFENSES.lazy("seam", "sdd_bench.defenses.seam:SEAM",
              "SEAM self-destructive model (Wang et al., arXiv 2505.12186): unlearn + refuse + anti-aligned harmful/benign gradients")
# SDD / SEAM paper baselines (issue 8)
DEFENSES.lazy("simpo", "sdd_bench.defenses.simpo:SimPO",
              "SimPO (Meng et al., NeurIPS 2024) on safety pairs: chosen = refusal, rejected = harmful (trl CPOTrainer)")
DEFENSES.lazy("deepalign", "sdd_bench.defenses.deepalign:DeepAlign",
              "safety-recovery augmentation (Qi et al., ICLR 2025): harmful prefix → refusal, + benign anchors")
DEFENSES.lazy("vaccine", "sdd_bench.defenses.vaccine:Vaccine",
              "Vaccine (Huang et al., NeurIPS 2024): alignment under worst-case hidden-state perturbation (ρ=2)")
DEFENSES.lazy("t-vaccine", "sdd_bench.defenses.t_vaccine:TVaccine",
              "Targeted Vaccine (Liu et al., 2024): perturb only sampled safety-critical layers (ρ=3, 8 layers)")
DEFENSES.lazy("booster", "sdd_bench.defenses.booster:Booster",
              "Booster (Huang et al., ICLR 2025): attenuate the harmful-loss drop of a simulated harmful step (λ=5, α=0.1)")
DEFENSES.lazy("repnoise", "sdd_bench.defenses.repnoise:RepNoise",
              "Representation Noising (Rosati et al., NeurIPS 2024): harmful representations → Gaussian noise")
DEFENSES.lazy("tar", "sdd_bench.defenses.tar:TAR",
              "Tamper-Resistant Safeguards (Tamirisa et al., ICLR 2025): first-order meta-learning vs an inner adversary")
