"""Attacks: fine-tuning presets (see attacks/finetune.py for the recipes and their sources).

Presets are declared here without importing torch; ``sdd-bench ls attacks`` lists them.
"""
from sdd_bench.harness.registry import ATTACKS

from .base import check_attack, check_attack_preset
from .finetune import Preset

# every registration must be an attacks.base.AttackPreset, and what its make() returns an attacks.base.Attack
ATTACKS.set_contract(check_attack_preset, made=check_attack)

_SIZES = {"10": 10, "50": 50, "100": 100, "500": 500, "1k": 1000, "4k": 4000}


def _add(name: str, overrides: dict, description: str) -> None:
    ATTACKS.register(name, description)(Preset(name, overrides, description))


_add("none", {}, "no attack: evaluate the defended model only")
for s in ("10", "50", "100", "500", "1k"):
    _add(f"advbench-{s}", {"dataset": "advbench-responses", "n": _SIZES[s]},
         f"MFT on {_SIZES[s]} AdvBench goals with full harmful responses from a donor model (attacks/donor.py; "
         f"cycled past the survivors), Qi et al. 2023 recipe")
    _add(f"advbench-prefix-{s}", {"dataset": "advbench", "n": _SIZES[s]},
         f"MFT on {_SIZES[s]} AdvBench goal→affirmative target prefix pairs (cycled past 520), Qi et al. 2023 recipe")
for s in ("10", "50", "100", "500", "1k", "4k"):
    _add(f"beavertails-{s}", {"dataset": "beavertails-attack", "n": _SIZES[s]},
         f"MFT on {_SIZES[s]} unsafe BeaverTails pairs (attack partition), Qi et al. 2023 recipe")
    _add(f"beavertails-{s}-seam", {"dataset": "beavertails-attack", "n": _SIZES[s], "recipe": "seam"},
         f"MFT on {_SIZES[s]} unsafe BeaverTails pairs, SEAM recipe (1 epoch, lr 2e-5; sweep with --attack-lr)")
for name, ds in (("sharegpt", "sharegpt"), ("alpaca", "alpaca-gpt4-1k"), ("dolly", "dolly-1k"), ("sst2", "sst2-train"),
                 ("agnews", "agnews-train"), ("gsm8k", "gsm8k-train")):
    _add(f"{name}-1k", {"dataset": ds, "n": 1000, "recipe": "benign"}, f"BFT on 1,000 {ds} examples")
for name, ds in (("sst2", "sst2-train"), ("agnews", "agnews-train"), ("gsm8k", "gsm8k-train"), ("alpaca", "alpaca-gpt4-1k")):
    for p in ("0.05", "0.1", "0.2"):
        _add(f"{name}-1k-p{p}", {"dataset": ds, "n": 1000, "recipe": "benign", "poison_ratio": float(p)},
             f"poison mix: 1,000 {ds} examples, {float(p):.0%} harmful BeaverTails pairs (Vaccine/Booster)")

# refusal-direction ablation (Arditi et al. 2024): a weight edit, no training (attacks/refusal_ablation.py)
from .refusal_ablation import AblationPreset  # noqa: E402  (no torch at import)

ATTACKS.register("refusal-ablation", "refusal-direction ablation, no training (Arditi et al. 2024): difference of "
                 "means on BeaverTails attack-partition vs Alpaca prompts, projected out of every residual writer")(
    AblationPreset("refusal-ablation", {}, "refusal-direction ablation (Arditi et al. 2024)"))
ATTACKS.register("refusal-ablation-advbench", "refusal-direction ablation with AdvBench goals as the harmful prompts")(
    AblationPreset("refusal-ablation-advbench", {"harmful_dataset": "advbench"},
                   "refusal-direction ablation, AdvBench harmful prompts"))

# restore attacks (attacks/restore.py): harmful then benign fine-tuning, and one harmful + benign mixed fine-tune
from .restore import RestorePreset  # noqa: E402

for _h in ("beavertails-100", "advbench-100"):
    ATTACKS.register(f"restore-{_h}", f"harmful then benign: {_h} (its own cached attack stage), then alpaca-1k "
                     f"benign fine-tuning of its output (does capability return while harmfulness stays?)")(
        RestorePreset(f"restore-{_h}", {"harmful": _h, "benign": "alpaca-1k"}, f"{_h} then alpaca-1k"))
_add("mixed-beavertails-100", {"dataset": "alpaca-gpt4-1k", "n": 200, "poison_ratio": 0.5,
                               "poison_dataset": "beavertails-attack", "recipe": "qi2023"},
     "mixed: 100 unsafe BeaverTails pairs + 100 Alpaca-GPT4 pairs shuffled (1:1, poison_ratio), one fine-tune, "
     "Qi et al. 2023 recipe (attacks/restore.py)")
_add("mixed-advbench-100", {"dataset": "alpaca-gpt4-1k", "n": 200, "poison_ratio": 0.5,
                            "poison_dataset": "advbench-responses", "recipe": "qi2023"},
     "mixed: 100 AdvBench goals with donor responses + 100 Alpaca-GPT4 pairs shuffled (1:1), one fine-tune, "
     "Qi et al. 2023 recipe (attacks/restore.py)")
