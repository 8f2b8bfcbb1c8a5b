"""Training settings from their sources (issues 18, 19): every default is pinned against a table here.

Each table row is what the authors' code or config says (the source is named in the defense's or the
recipe's docstring); a change of a default must change this table too."""
import math

import pytest

from sdd_bench.defenses import _common as C
from sdd_bench.harness.registry import DEFENSES
from sdd_bench.harness.training import TrainConfig, lora_config, training_arguments, warmup_steps

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj")

# defense -> {config field: the authors' value} on the paper profile
AUTHORS = {
    "vaccine": dict(rho=2.0, lr=1e-3, batch_size=5, max_steps=20000, lora=True, lora_r=8, lora_alpha=4.0,
                    lora_dropout=0.1, lora_target_modules=LLAMA_LINEAR, weight_decay=0.1, scheduler="cosine",
                    warmup_ratio=0.1, max_grad_norm=1.0),
    "t-vaccine": dict(rho=3.0, n_layers=8, resample_every=20, probe_every=200, n_probe=200, probe_batch=1, lr=1e-3,
                      batch_size=10, max_steps=4000, max_length=200, lora=True, lora_r=8, lora_alpha=4.0,
                      lora_dropout=0.1, lora_target_modules=LLAMA_LINEAR, weight_decay=0.1, scheduler="cosine",
                      warmup_ratio=0.1, max_grad_norm=1.0),
    "booster": dict(lam=5.0, alpha=0.1, n_align=5000, n_harmful=5000, lr=5e-4, batch_size=10, max_steps=10000,
                    max_length=256, lora=True, lora_r=32, lora_alpha=4.0, lora_dropout=0.0,
                    lora_target_modules=("q_proj", "k_proj", "v_proj"), weight_decay=0.1, scheduler="constant",
                    warmup_ratio=0.0, max_grad_norm=1.0),
    "repnoise": dict(beta=0.001, alpha=1.0, mmd_kernel_mul=2.0, mmd_kernel_num=5, lora=False),
    "tar": dict(lambda_tr=4.0, lambda_retain=1.0, inner_steps=64, inner_lr_samples=(2e-6, 2e-5, 4e-5),
                inner_weight_decay=0.01, adversary_batch_size=4, batch_size=8, tr_subsample=4, schedule_lambda=0.0625,
                tr_loss="max_entropy", retain_representations=True, lr=2e-5, max_steps=750, warmup_steps=32,
                lora=False, max_grad_norm=None, weight_decay=0.0),
    "deepalign": dict(n_recovery=256, benign_ratio=4.0, k_max=100, p_k0=0.5, lr=2e-5, max_steps=160, batch_size=80,
                      lora=False, scheduler="linear", warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0),
    "simpo": dict(beta=2.5, gamma=1.375, lr=1e-6, epochs=1.0, max_steps=None, batch_size=128, grad_accum=16,
                  scheduler="cosine", warmup_ratio=0.1, weight_decay=0.0, max_grad_norm=1.0, lora=False),
    "sdd": dict(n_pairs=8000, sim_threshold=0.25, lr=5e-7, batch_size=24, passes=1.5, max_steps=None, lora=False,
                reject_prefix=""),
    "sdd-reject": dict(reject_prefix="I refuse to answer your question for responsible and ethical reasons. "
                                     "I provided an irrational answer to your question.", reject_joiner="\n\n"),
    "seam": dict(alpha=1.0, beta=0.01, epsilon=1e-3, lr=2e-5, max_steps=500, batch_size=8, scheduler="cosine",
                 warmup_ratio=0.1, max_grad_norm=None, lora=False),
}


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_paper_profile_matches_the_authors(name):
    cfg = DEFENSES.get(name).configure("paper").cfg
    got = {k: getattr(cfg, k) for k in AUTHORS[name]}
    assert got == AUTHORS[name]


@pytest.mark.parametrize("name", ["vaccine", "t-vaccine", "booster"])
def test_lora_shape_is_the_authors_on_every_profile(name):
    # the smoke/tiny profiles shrink sizes, not the LoRA scale α/r, its dropout or its targets
    want = {k: AUTHORS[name][k] for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                                          "weight_decay", "scheduler", "warmup_ratio")}
    for prof in ("tiny", "smoke"):
        cfg = DEFENSES.get(name).configure(prof).cfg
        assert {k: getattr(cfg, k) for k in want} == want, prof


@pytest.mark.parametrize("name", ["vaccine", "t-vaccine", "booster", "repnoise", "tar", "deepalign"])
def test_resolved_train_config_carries_every_setting(name):
    cfg = DEFENSES.get(name).configure("paper").cfg
    tc = C.lora_train_config(cfg, seed=0)
    for f in C.TRAIN_FIELDS:
        assert getattr(tc, f) == getattr(cfg, f), f
    lc = lora_config(tc)
    assert lc.r == cfg.lora_r and lc.lora_alpha == cfg.lora_alpha and lc.lora_dropout == cfg.lora_dropout
    want = cfg.lora_target_modules
    assert (lc.target_modules == want) if isinstance(want, str) else (set(lc.target_modules) == set(want))


def test_lora_train_config_refuses_a_config_without_its_settings():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Bare:
        lr: float = 1e-4
        max_steps: int = 1
        batch_size: int = 1
        max_length: int = 16
        lora: bool = True
        lora_r: int = 8

    with pytest.raises(TypeError, match="lora_alpha"):
        C.lora_train_config(Bare(), 0)


def test_booster_adapters_sit_on_qkv_only_with_scale_one_eighth(tiny_ref):
    from peft import get_peft_model

    from sdd_bench.harness.training import load_trainable
    cfg = DEFENSES.get("booster").configure("tiny").cfg
    model, _ = load_trainable(tiny_ref, "cpu")
    pm = get_peft_model(model, lora_config(C.lora_train_config(cfg, 0)))
    wrapped = {n.rsplit(".", 1)[-1] for n, m in pm.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)}
    assert wrapped == {"q_proj", "k_proj", "v_proj"}
    m = next(m for _, m in pm.named_modules() if hasattr(m, "lora_A") and len(m.lora_A))
    assert m.scaling["default"] == pytest.approx(4 / 32)


# --- attack recipes (issue 18 item 4) ------------------------------------------------------

# recipe -> (n examples, resolved trainer arguments: clipping, warm-up steps, schedule, weight decay, batch, steps)
RECIPE_TABLE = {
    # Qi et al. 2023 code: no clipping, no warm-up, weight decay 0, batch 10, 5 epochs (schedule: our choice)
    "qi2023": (100, dict(max_grad_norm=0.0, warmup_steps=0, lr_scheduler_type="constant", weight_decay=0.0,
                         per_device_train_batch_size=10, learning_rate=5e-5), 50),
    # SEAM attack script: batch 4, 250 steps on 1K, cosine, 10% warm-up, weight decay 0.01, no clipping
    "seam": (1000, dict(max_grad_norm=0.0, warmup_steps=25, lr_scheduler_type="cosine", weight_decay=0.01,
                        per_device_train_batch_size=4, learning_rate=2e-5), 250),
    "benign": (1000, dict(max_grad_norm=0.0, warmup_steps=0, lr_scheduler_type="constant", weight_decay=0.0,
                          per_device_train_batch_size=10, learning_rate=2e-5), 100),
}


@pytest.mark.parametrize("recipe", sorted(RECIPE_TABLE))
def test_recipe_resolves_to_its_trainer_arguments(recipe, tmp_path):
    from sdd_bench.attacks.finetune import AttackConfig, FinetuneAttack
    from sdd_bench.harness.config import build
    from sdd_bench.harness.training import total_steps
    n, want, steps = RECIPE_TABLE[recipe]
    tc = FinetuneAttack(build(AttackConfig, {"recipe": recipe, "n": n})).train_config(0)
    args = training_arguments(tc, tmp_path, "cpu", n)
    got = {k: getattr(args, k) for k in want}
    got["lr_scheduler_type"] = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    assert got == want and total_steps(tc, n) == steps


def test_seam_lora_attack_uses_peft_defaults():
    from peft import LoraConfig

    from sdd_bench.attacks.finetune import AttackConfig, FinetuneAttack
    from sdd_bench.harness.config import build
    tc = FinetuneAttack(build(AttackConfig, {"recipe": "seam", "lora": True})).train_config(0)
    d = LoraConfig()
    assert (tc.lora_r, tc.lora_alpha, tc.lora_dropout) == (d.r, d.lora_alpha, d.lora_dropout)
    assert set(tc.lora_target_modules) == {"q_proj", "v_proj"}  # peft's default for Llama


def test_seam_defense_does_not_clip(tmp_path):
    cfg = DEFENSES.get("seam").configure("paper").cfg
    assert cfg.max_grad_norm is None
    args = training_arguments(TrainConfig(lr=2e-5, max_steps=500, max_grad_norm=cfg.max_grad_norm,
                                          scheduler="cosine", warmup_ratio=0.1), tmp_path, "cpu", 4000)
    assert args.max_grad_norm == 0.0 and args.warmup_steps == 50


@pytest.mark.parametrize("steps,ratio,want", [(500, 0.1, 50), (40, 0.1, 4), (250, 0.1, 25), (7, 0.1, 1), (10, 0.0, 0)])
def test_warmup_is_an_integer_step_count_on_every_transformers(steps, ratio, want, tmp_path):
    # transformers < 5 reads a float warmup_steps as steps (0.1 → no warm-up), ≥ 5 as a ratio; an int is a
    # step count on both, and the schedule built from it warms up for exactly `want` steps
    import torch
    from transformers import get_scheduler
    tc = TrainConfig(lr=1.0, max_steps=steps, scheduler="cosine", warmup_ratio=ratio)
    args = training_arguments(tc, tmp_path, "cpu", 100)
    assert isinstance(args.warmup_steps, int) and args.warmup_steps == want == warmup_steps(tc, 100)
    assert args.get_warmup_steps(steps) == want
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sch = get_scheduler("cosine", opt, num_warmup_steps=args.get_warmup_steps(steps), num_training_steps=steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs[0] == (0.0 if want else 1.0)
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == want


def test_no_clipping_means_the_gradient_is_not_rescaled(tiny_ref, tmp_path):
    # max_grad_norm None → TrainingArguments 0.0 → Trainer skips clip_grad_norm_ (checked on one step with SGD)
    from datasets import Dataset
    from transformers import Trainer

    from sdd_bench.harness.training import PadCollator, load_trainable, tokenize_pairs
    grads = {}
    for clip in (None, 1e-3):
        model, tok = load_trainable(tiny_ref, "cpu")
        rows = tokenize_pairs(tok, "chat", [{"prompt": "Say hi.", "response": "Hi there, friend."}] * 2, 32)
        tc = TrainConfig(lr=1.0, max_steps=1, batch_size=2, optimizer="sgd", max_grad_norm=clip)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        Trainer(model=model, args=training_arguments(tc, tmp_path / str(clip), "cpu", 2, disable_tqdm=True),
                train_dataset=Dataset.from_list(rows), data_collator=PadCollator(tok.pad_token_id)).train()
        grads[clip] = math.sqrt(sum(float(((before[n] - p.detach()) ** 2).sum()) for n, p in model.named_parameters()))
    assert grads[1e-3] == pytest.approx(1e-3, rel=1e-3)  # clipped to 1e-3 (lr 1, SGD: step = gradient)
    assert grads[None] > 10 * grads[1e-3]  # unclipped


def test_sdd_steps_give_the_papers_passes_on_what_was_built():
    from sdd_bench.defenses.sdd import balanced_harmful_prompts
    d = DEFENSES.get("sdd").configure("paper")
    assert d.train_steps(8000) == 500  # the paper: 500 steps × 24 on 8K pairs = 1.5 passes
    assert d.train_steps(1796) == math.ceil(1.5 * 1796 / 24)  # not 500 (6.7 passes) on the pairs we can build
    assert DEFENSES.get("sdd").configure("paper", {"max_steps": 7}).train_steps(1796) == 7
    assert DEFENSES.get("sdd").configure("smoke").train_steps(320) == 40  # smoke: one pass, sized to the CPU
    prompts = balanced_harmful_prompts(8000, 0)
    counts: dict = {}
    for p in prompts:
        counts[p["category"]] = counts.get(p["category"], 0) + 1
    assert len(prompts) < 8000 and len(counts) == 14  # the partition cannot supply 8K distinct prompts
    assert len({p["prompt"] for p in prompts}) == len(prompts)  # never repeated to reach n_pairs
    small = balanced_harmful_prompts(14 * 5, 0)  # where every category has enough, shares are equal
    per = {}
    for p in small:
        per[p["category"]] = per.get(p["category"], 0) + 1
    assert set(per.values()) == {5}
