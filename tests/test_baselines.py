"""Baseline defenses (issue 8) on the tiny profile: each test checks the method's defining mechanism.

Fixtures are short harmless texts; the defend() runs use 1 optimizer step to stay fast."""
import copy
import math

import pytest
import torch

from sdd_bench.defenses import _common as C
from sdd_bench.defenses.base import Context
from sdd_bench.harness.registry import DEFENSES
from sdd_bench.harness.training import load_trainable

BASELINES = ("simpo", "deepalign", "vaccine", "t-vaccine", "booster", "repnoise", "tar")
TOY = [{"prompt": "Name a primary color.", "response": "Blue is a primary color."},
       {"prompt": "What is two plus two?", "response": "Two plus two is four."},
       {"prompt": "Say hello politely.", "response": "Hello, it is nice to meet you."},
       {"prompt": "Give a fruit.", "response": "An apple."}]
CTX = Context(profile="tiny", device="cpu", progress=False)


@pytest.fixture()
def fresh(tiny_ref):
    torch.manual_seed(0)
    model, tok = load_trainable(tiny_ref, "cpu")
    return model, tok


def _batch(tok, rows=TOY, n=4):
    return C.BatchCycler(C.tokenize(tok, "chat", rows, 64), n, tok.pad_token_id).next()


def _defend(name, tiny_ref, tmp_path, **over):
    d = DEFENSES.get(name).configure("tiny", {"max_steps": 1, **over})
    return d, *d.defend(tiny_ref, tmp_path / name, CTX)


@pytest.mark.parametrize("name", BASELINES)
def test_registered_and_profiles_validate(name):
    cls = DEFENSES.get(name)
    import sys
    mod = sys.modules[cls.__module__]
    assert "arXiv" in mod.__doc__ and "Defaults" in mod.__doc__
    for prof in ("tiny", "smoke", "paper"):
        d = cls.configure(prof)
        assert d.spec()["defense"] == name
        assert d.spec()["data"]  # dataset fingerprints recorded



@pytest.mark.parametrize("name", [n for n in DEFENSES.names() if n != "none"])
def test_build_data_as_the_pipeline_calls_it(name):
    # the preflight calls build_data(seed) with no model at hand (it once crashed the smoke grid for deepalign after
    # its defense and evaluations had run); one typed result, whose harmful prompts the overlap check reads
    from sdd_bench.defenses.base import BuiltData
    built = DEFENSES.get(name).configure("tiny").build_data(0)
    assert isinstance(built, BuiltData)
    assert built.rows and all(isinstance(r["prompt"], str) and r["prompt"] for r in built.rows)
    assert built.harmful_prompts and all(isinstance(p, str) and p for p in built.harmful_prompts)


def test_deepalign_training_rows_are_the_built_rows_with_their_prefixes_cut(fresh):
    from sdd_bench.defenses.deepalign import cut_prefixes, recovery_examples
    _, tok = fresh
    d = DEFENSES.get("deepalign").configure("tiny")
    built = d.build_data(0).rows
    cut = cut_prefixes(built, tok)
    assert [r["prompt"] for r in cut] == [r["prompt"] for r in built]
    assert all(r["prefill"] is None for r in built if r["kind"] == "recovery")
    assert any(r["prefill"] for r in cut if r["kind"] == "recovery")
    # cutting later gives what cutting at construction gives (the rows defend trained on before BuiltData)
    harm = C.harmful_rows(6, 0)
    assert cut_prefixes(recovery_examples(harm, None, 8, 0.5, 0), tok) == recovery_examples(harm, tok, 8, 0.5, 0)

# --- shared data -------------------------------------------------------------------------

def test_data_pools_respect_partitions():
    from sdd_bench.harness import data
    defense_keys = {data.normalize(r["prompt"]) for r in data.load("beavertails-defense")}
    harm = C.harmful_rows(20, 0)
    assert len(harm) == 20 and all(data.normalize(r["prompt"]) in defense_keys for r in harm)
    align = C.alignment_rows(200, 0)
    assert {r["source"] for r in align} == {"beavertails-safe", "refusals"}
    assert C.refusal_for("x", __import__("random").Random(0)) in C.REFUSAL_TEMPLATES


def test_shared_helpers_lora_rule_trainer_capture_and_unsafe_filter():
    from sdd_bench.defenses.refusal_sft import RefusalSFT
    from sdd_bench.defenses.sdd import SDD
    from sdd_bench.harness import data
    rs = RefusalSFT.configure("smoke").cfg
    tc = C.train_config(rs, 0)
    assert tc.lora_alpha == C.LORA_ALPHA_PER_RANK * rs.lora_r and tc.max_steps == rs.max_steps  # no α of its own: 2r
    assert C.train_config(SDD.configure("smoke", {"lora_alpha": 8.0}).cfg, 0).lora_alpha == 8.0  # its own α wins
    with pytest.raises(TypeError, match="lacks the training fields"):  # the baselines must state every field
        C.lora_train_config(rs, 0)
    cap = C.TrainerCapture(dict, setup=lambda t: t.update(seen=True))
    assert cap(a=1) is cap.trainer and cap.trainer == {"a": 1, "seen": True}
    rows = C.unsafe_pairs("beavertails-attack")
    assert rows and all(not r["is_safe"] and r["response"].strip() for r in rows)
    distinct = C.unsafe_pairs("beavertails-defense", distinct_prompts=True)
    every = C.unsafe_pairs("beavertails-defense")
    assert len({data.normalize(r["prompt"]) for r in distinct}) == len(distinct) < len(every)


# --- SimPO ---------------------------------------------------------------------------------

def test_simpo_loss_matches_hand_computation(fresh, tmp_path):
    from sdd_bench.defenses.simpo import SimPO, make_trainer, templated
    model, tok = fresh
    cfg = SimPO.configure("tiny").cfg
    pairs = [{"prompt": "Name a color.", "chosen": "I'd rather not.", "rejected": "Blue, clearly the best one."},
             {"prompt": "Count to three.", "chosen": "Sorry, I can't.", "rejected": "One, two, three."}]
    tr = make_trainer(model, tok, templated(pairs, tok, "chat"), cfg, tmp_path, "cpu", 0, lora=False)
    batch = next(iter(tr.get_train_dataloader()))
    model.eval()
    with torch.no_grad():
        loss = tr.compute_loss(model, batch)

        def avg_logp(ids, labels):
            logits = model(ids, attention_mask=(ids != -1).long()).logits[:, :-1]
            lab = labels[:, 1:]
            mask = lab != -100
            lp = torch.log_softmax(logits.float(), -1).gather(-1, lab.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            return (lp * mask).sum(-1) / mask.sum(-1)

        ac = avg_logp(batch["chosen_input_ids"], batch["chosen_labels"])
        ar = avg_logp(batch["rejected_input_ids"], batch["rejected_labels"])
    # padding is right-padding with masked labels, so an all-ones attention mask changes nothing for real tokens
    hand = -torch.nn.functional.logsigmoid(cfg.beta * (ac - ar) - cfg.gamma).mean()
    assert tr.loss_type == "simpo" and tr.cpo_alpha == 0
    assert math.isclose(float(loss), float(hand), rel_tol=1e-4, abs_tol=1e-5)


def test_simpo_pairs_chosen_refusal_rejected_harmful():
    from sdd_bench.defenses.simpo import preference_pairs
    p = preference_pairs(5, 0)
    assert len(p) == 5 and all(x["chosen"] in C.REFUSAL_TEMPLATES and x["rejected"] != x["chosen"] for x in p)


# --- DeepAlign -----------------------------------------------------------------------------

def test_deepalign_prefix_in_context_refusal_trained(fresh):
    from sdd_bench.defenses.deepalign import recovery_examples
    _, tok = fresh
    rows = [{"prompt": "Tell me a story.", "response": "Once upon a time there was a small red boat on a lake."}] * 6
    ex = recovery_examples(rows, tok, k_max=5, p_k0=0.3, seed=1)
    assert any(e["k"] == 0 for e in ex) and any(e["k"] > 0 for e in ex) and all(e["k"] <= 5 for e in ex)
    e = next(e for e in ex if e["k"] > 0)
    toks = C.tokenize(tok, "chat", [e], 128)[0]
    trained = tok.decode([t for t, l in zip(toks["input_ids"], toks["labels"]) if l != -100])
    assert e["prefill"].strip() and e["prefill"].strip() not in trained  # the harmful prefix is context only
    assert e["response"].strip() in trained  # the refusal is the target


def test_deepalign_defend_tiny(tiny_ref, tmp_path):
    _, new, info = _defend("deepalign", tiny_ref, tmp_path)
    assert info["steps"] == 1 and info["data_stats"]["recovery"] == 8 and info["data_stats"]["benign"] == 32


# --- Vaccine / T-Vaccine --------------------------------------------------------------------

def test_vaccine_perturbation_has_norm_rho_and_raises_loss(fresh):
    model, tok = fresh
    b = _batch(tok)
    loss, grads = C.hidden_state_grads(model, b)
    assert sorted(grads) == list(range(len(C.decoder_layers(model))))
    assert all(p.grad is None for p in model.parameters())  # pass 1 leaves parameter gradients alone
    eps = C.scaled_perturbation(grads, 2.0)
    norm = math.sqrt(sum(float((e ** 2).sum()) for e in eps.values()))
    assert math.isclose(norm, 2.0, rel_tol=1e-4)
    with torch.no_grad(), C.add_to_hidden(model, eps):
        perturbed = float(C.lm_loss(model, b))
    assert perturbed > float(loss)


def test_vaccine_perturbs_attention_outputs(fresh):
    """The authors hook each self-attention module's output (git-disl/Vaccine trainer.py); so do we:
    the perturbation replaces what `self_attn` returns, so a hook registered after ours sees h + ε."""
    model, tok = fresh
    layers = C.decoder_layers(model)
    assert C.attention_modules(model) == [layer.self_attn for layer in layers]
    b = _batch(tok)
    _, grads = C.hidden_state_grads(model, b)
    eps = {1: torch.full_like(grads[1], 0.5)}
    seen = []
    with torch.no_grad():
        with C.add_to_hidden(model, eps):
            h = layers[1].self_attn.register_forward_hook(lambda m, i, o: seen.append(o[0].clone()))
            C.lm_loss(model, b)
        h.remove()
        h = layers[1].self_attn.register_forward_hook(lambda m, i, o: seen.append(o[0].clone()))
        C.lm_loss(model, b)
        h.remove()
    assert torch.allclose(seen[0] - seen[1], eps[1], atol=1e-5)


def test_vaccine_defend_tiny(tiny_ref, tmp_path):
    d, new, info = _defend("vaccine", tiny_ref, tmp_path)
    assert d.cfg.rho == 2.0 and info["steps"] == 1 and new.adapter


def test_t_vaccine_perturbs_only_sampled_layers(fresh, tmp_path):
    from sdd_bench.defenses.t_vaccine import TargetedPerturbationTrainer, sample_layers
    from sdd_bench.harness.training import training_arguments, TrainConfig, PadCollator
    from datasets import Dataset
    assert sample_layers({0: 0.0, 1: 1.0, 2: 0.0}, 1) == [1]  # probability ∝ gradient norm
    model, tok = fresh
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = training_arguments(TrainConfig(lr=1e-2, max_steps=2, batch_size=4), tmp_path, "cpu", 4, disable_tqdm=True)
    tr = TargetedPerturbationTrainer(model=model, args=args, train_dataset=Dataset.from_list(C.tokenize(tok, "chat", TOY, 64)),
                                     data_collator=PadCollator(tok.pad_token_id), rho=3.0, n_layers=1,
                                     resample_every=20)
    tr.train()
    sampled = tr.sampled
    assert len(sampled) == 1 and tr.sample_history == [(0, sampled)]  # one draw in 2 steps (resample every 20)
    assert sorted(tr.last_perturbation) == sampled
    assert math.isclose(math.sqrt(sum(float((e ** 2).sum()) for e in tr.last_perturbation.values())), 3.0, rel_tol=1e-4)
    # frozen layers: weights of non-sampled decoder layers did not move, the sampled one did
    moved = {C.layer_of(n) for n, p in model.named_parameters()
             if C.layer_of(n) is not None and not torch.equal(p.detach(), before[n])}
    assert moved == set(sampled)


def test_t_vaccine_defend_tiny(tiny_ref, tmp_path):
    d, new, info = _defend("t-vaccine", tiny_ref, tmp_path)
    assert (d.cfg.rho, d.cfg.n_layers, d.cfg.resample_every) == (3.0, 1, 20) and info["steps"] == 1
    assert new.lineage[-1] == "t-vaccine"
    # the layer importances were measured on the harmful probe batch, once at step 0 (probe every 200 steps)
    assert [step for step, _ in info["layer_importance"]] == [0] and info["data_stats"]["harmful_probe"] > 0


def test_t_vaccine_scores_layers_on_harmful_batch(fresh, tmp_path):
    """Importances come from the harmful stream (not the alignment batch) and refresh every probe_every steps."""
    from sdd_bench.defenses.t_vaccine import TargetedPerturbationTrainer
    from sdd_bench.harness.training import training_arguments, TrainConfig, PadCollator
    from datasets import Dataset
    model, tok = fresh
    harmful = C.BatchCycler(C.tokenize(tok, "chat", TOY[:1], 64), 1, tok.pad_token_id)
    expected = {i: float(g.float().norm()) for i, g in C.hidden_state_grads(model, harmful.next())[1].items()}
    harmful = C.BatchCycler(C.tokenize(tok, "chat", TOY[:1], 64), 1, tok.pad_token_id)
    args = training_arguments(TrainConfig(lr=0.0, max_steps=3, batch_size=4), tmp_path, "cpu", 4, disable_tqdm=True)
    tr = TargetedPerturbationTrainer(model=model, args=args, train_dataset=Dataset.from_list(C.tokenize(tok, "chat", TOY, 64)),
                                     data_collator=PadCollator(tok.pad_token_id), rho=3.0, n_layers=1,
                                     resample_every=1, harmful=harmful, probe_every=2)
    tr.train()
    assert [s for s, _ in tr.probe_history] == [0, 2]
    first = tr.probe_history[0][1]
    assert first.keys() == expected.keys()
    assert all(math.isclose(first[i], expected[i], rel_tol=1e-4) for i in expected)  # lr 0: weights unchanged


# --- Booster ---------------------------------------------------------------------------------

def test_booster_regularizer_equals_loss_difference(fresh):
    from sdd_bench.defenses.booster import booster_regularizer
    model, tok = fresh
    b = _batch(tok)
    alpha = 0.1
    reg, h0, h1 = booster_regularizer(model, b, alpha)
    # by hand: one normalised harmful gradient step on a copy, then the loss there
    twin = copy.deepcopy(model)
    loss = C.lm_loss(twin, b)
    params = [p for _, p in C.trainable(twin)]
    g = torch.autograd.grad(loss, params)
    norm = torch.sqrt(sum((x ** 2).sum() for x in g))
    with torch.no_grad():
        for p, x in zip(params, g):
            p.sub_(alpha * x / norm)
        after = float(C.lm_loss(twin, b))
    assert math.isclose(float(h0), float(loss), rel_tol=1e-5)
    assert math.isclose(float(h1), after, rel_tol=1e-5)
    assert math.isclose(float(reg), float(loss) - after, rel_tol=1e-3, abs_tol=1e-6)
    assert float(reg) > 0  # a descent step lowers the harmful loss
    # its gradient is ∇h(θ) − ∇h(θ') (first order)
    reg.backward()
    g_after = torch.autograd.grad(C.lm_loss(twin, b), params)
    name0, p0 = C.trainable(model)[-1]
    assert torch.allclose(p0.grad, g[-1] - g_after[-1], atol=1e-5)


def test_booster_alignment_is_the_harmful_prompts_with_refusals():
    d = DEFENSES.get("booster").configure("tiny")
    built = d.build_data(0)
    align, harmful = built.rows, built.parts["harmful"]
    assert set(built.harmful_prompts) == {r["prompt"] for r in harmful}
    assert [r["prompt"] for r in align] == [r["prompt"] for r in harmful][:len(align)]
    assert all(r["response"] in C.REFUSAL_TEMPLATES for r in align)


def test_booster_defend_tiny(tiny_ref, tmp_path):
    d, new, info = _defend("booster", tiny_ref, tmp_path)
    assert (d.cfg.lam, d.cfg.alpha) == (5.0, 0.1)
    r = info["regularizer"]["first"]
    assert math.isclose(r["reg"], r["harmful"] - r["harmful_after_step"], rel_tol=1e-3, abs_tol=1e-6)


# --- RepNoise ------------------------------------------------------------------------------

def test_repnoise_mmd_has_a_data_dependent_bandwidth():
    from sdd_bench.defenses.repnoise import mmd
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 32, generator=g), torch.randn(8, 32, generator=g)
    assert float(mmd(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(mmd(x + 3.0, y)) > float(mmd(x, y))
    # the bandwidth is the mean pairwise distance: scaling both samples leaves the MMD unchanged (a fixed
    # bandwidth would not)
    assert float(mmd(100 * x, 100 * y)) == pytest.approx(float(mmd(x, y)), rel=1e-4)


def test_repnoise_pairs_share_prompts_and_mask_only_differing_response_tokens(fresh):
    from sdd_bench.defenses.repnoise import pair_batches, paired_rows
    rows = paired_rows(6, 0)
    assert len(rows) == 6 and all(r["refusal"] in C.REFUSAL_TEMPLATES for r in rows)
    _, tok = fresh
    bad_rows = [{"prompt": "Name a colour.", "response": "Blue, like the sky."}] * 2
    ok_rows = [{"prompt": "Name a colour.", "response": "I would rather not say."}] * 2
    bad = C.BatchCycler(C.tokenize(tok, "chat", bad_rows, 64), 2, tok.pad_token_id).next()
    okt = C.tokenize(tok, "chat", ok_rows, 64)
    b, o, differ = pair_batches(bad, [t["input_ids"] for t in okt], [t["labels"] for t in okt], tok.pad_token_id)
    assert b["input_ids"].shape == o["input_ids"].shape == differ.shape
    prompt_len = sum(1 for l in okt[0]["labels"] if l == -100)
    assert not differ[:, :prompt_len].any() and differ[:, prompt_len:].any()  # same prompt: only the answer differs


def test_repnoise_loss_is_the_authors_composition(fresh):
    import torch.nn.functional as F

    from sdd_bench.defenses.repnoise import _masked_labels, pair_batches, repnoise_loss
    model, tok = fresh
    bad = C.BatchCycler(C.tokenize(tok, "chat", TOY[:2], 64), 2, tok.pad_token_id).next()
    okt = C.tokenize(tok, "chat", [{"prompt": r["prompt"], "response": "No."} for r in TOY[:2]], 64)
    b, o, differ = pair_batches(bad, [t["input_ids"] for t in okt], [t["labels"] for t in okt], tok.pad_token_id)
    torch.manual_seed(0)
    loss, parts = repnoise_loss(model, b, o, differ, beta=0.001, alpha=1.0)
    expect = parts["harmless_ce"] + 0.001 * parts["mmd"] - math.log(parts["harmful_loss_all_layers"])
    assert math.isclose(float(loss), expect, rel_tol=1e-5) and parts["mmd"] > 0
    # by hand: (final CE + CE of every hidden state through norm and LM head) / (#hidden states) + 1
    with torch.no_grad():
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
        lab = _masked_labels(b, differ)[:, 1:].flatten()

        def ce(lg):
            return float(F.cross_entropy(lg[:, :-1].flatten(0, 1), lab, ignore_index=-100))
        head, norm = model.get_output_embeddings(), model.model.norm
        per_layer = [ce(head(norm(h))) for h in out.hidden_states]
        hand = (ce(out.logits) + sum(per_layer)) / len(out.hidden_states) + 1
    assert len(out.hidden_states) == len(C.decoder_layers(model)) + 1
    assert math.isclose(parts["harmful_loss_all_layers"], hand, rel_tol=1e-5)
    assert math.isclose(parts["harmful_ce"], ce(out.logits), rel_tol=1e-5)
    torch.manual_seed(0)  # the read-outs over the whole sequence (loss.py's way) give the same loss
    whole, _ = repnoise_loss(model, b, o, differ, beta=0.001, alpha=1.0, scored_only=False)
    assert math.isclose(float(whole), float(loss), rel_tol=1e-5)
    loss.backward()  # gradients flow to the weights (through the checkpointed read-outs too)
    assert all(p.grad is not None for p in model.model.embed_tokens.parameters())


def test_repnoise_defend_tiny(tiny_ref, tmp_path):
    d, new, info = _defend("repnoise", tiny_ref, tmp_path)
    assert (d.cfg.beta, d.cfg.alpha) == (0.001, 1.0) and info["loss_parts"]["first"]["mmd"] > 0
    assert info["data_stats"]["pairs"] == 16 and "deviations" in d.spec()


# --- TAR -----------------------------------------------------------------------------------

def test_tar_weights_are_the_authors_schedule():
    from sdd_bench.defenses.tar import tr_weights
    w = tr_weights(64, 4, 0.0625)
    assert sorted(w) == list(range(3, 64, 4)) and w[63] == 1.0
    assert w[3] == pytest.approx(math.exp(-0.0625 * 60))
    assert sum(w.values()) == pytest.approx(4.44, abs=0.01)  # ≈ 4.4× the old mean's total weight of 1


def test_tar_max_entropy_loss_on_a_toy_batch():
    from sdd_bench.defenses.tar import max_entropy_loss
    V = 11
    uniform = torch.zeros(2, 3, V)
    att = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert float(max_entropy_loss(uniform, att)) == pytest.approx(-math.log(V), rel=1e-6)
    peaked = uniform.clone()
    peaked[..., 0] = 50.0
    assert float(max_entropy_loss(peaked, att)) > float(max_entropy_loss(uniform, att))
    # padding positions do not count
    mixed = uniform.clone()
    mixed[1, 2, 0] = 50.0
    assert float(max_entropy_loss(mixed, att)) == pytest.approx(-math.log(V), rel=1e-6)


def test_tar_adversary_weighted_tr_gradient_and_copy_only(fresh):
    from sdd_bench.defenses.tar import adversary_tr_grads, tamper_resistance_loss
    model, tok = fresh
    rows = C.tokenize(tok, "chat", TOY, 64)
    harm, held = C.BatchCycler(rows, 2, tok.pad_token_id), C.BatchCycler(rows[::-1], 2, tok.pad_token_id)
    before = {n: p.detach().clone() for n, p in C.trainable(model)}
    weights = {0: 0.25, 2: 1.0}
    grads, info = adversary_tr_grads(model, harm, held, inner_steps=3, inner_lr=1e-2, weights=weights)
    assert all(torch.equal(p, before[n]) for n, p in C.trainable(model))  # outer weights untouched
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(info["adapted"][n], before[n]) for n in before)  # the copy moved
    assert len(info["tr_losses"]) == 2
    # with a frozen adversary (lr 0) every evaluation is at θ: the result is (Σ w) · ∇L_TR(θ)
    held2 = C.BatchCycler(rows[::-1], 2, tok.pad_token_id)
    g0, _ = adversary_tr_grads(model, C.BatchCycler(rows, 2, tok.pad_token_id), held2, 3, 0.0, weights,
                               weight_decay=0.0)
    x_tr = C.BatchCycler(rows[::-1], 2, tok.pad_token_id).next()
    direct = torch.autograd.grad(tamper_resistance_loss(model, x_tr), [p for _, p in C.trainable(model)])
    assert all(torch.allclose(a, 1.25 * d, atol=1e-6) for a, d in zip(g0, direct))


def test_tar_retain_loss_is_ce_plus_representation_distance(fresh):
    from sdd_bench.defenses.tar import frozen_reference, retain_loss
    model, tok = fresh
    b = _batch(tok)
    frozen = frozen_reference(model)
    loss, parts = retain_loss(model, b, frozen)
    assert parts["retain_rep_dist"] == pytest.approx(0.0, abs=1e-6)  # at the start the model is its reference
    assert float(loss) == pytest.approx(float(C.lm_loss(model, b)), rel=1e-6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    _, moved = retain_loss(model, b, frozen)
    assert moved["retain_rep_dist"] > 0


def test_tar_meta_step_changes_the_outer_weights(fresh, tmp_path):
    from datasets import Dataset

    from sdd_bench.defenses.tar import TARTrainer
    from sdd_bench.harness.training import PadCollator, TrainConfig, training_arguments
    model, tok = fresh
    rows = C.tokenize(tok, "chat", TOY, 64)
    harm, held = C.BatchCycler(rows, 2, tok.pad_token_id), C.BatchCycler(rows[::-1], 2, tok.pad_token_id)
    before = {n: p.detach().clone() for n, p in C.trainable(model)}
    args = training_arguments(TrainConfig(lr=1e-3, max_steps=1, batch_size=2), tmp_path, "cpu", 4, disable_tqdm=True)
    tr = TARTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                    data_collator=PadCollator(tok.pad_token_id), harmful=harm, heldout=held, inner_steps=1,
                    inner_lr_samples=(1e-2,), tr_weights={0: 1.0})
    tr.train()
    assert len(tr.meta_log) == 1 and tr.meta_log[0]["adversary_lr"] == 1e-2
    assert any(not torch.equal(p.detach(), before[n]) for n, p in C.trainable(model))


def test_tar_defend_tiny(tiny_ref, tmp_path):
    d, new, info = _defend("tar", tiny_ref, tmp_path, inner_steps=1)
    assert info["steps"] == 1 and len(info["meta_log"]) == 1
    assert "retain_rep_dist" in info["meta_log"][0]
    assert info["data_stats"]["adversary"] + info["data_stats"]["heldout_tr"] == 8


def test_simpo_defend_tiny(tiny_ref, tmp_path):
    d, new, info = _defend("simpo", tiny_ref, tmp_path)
    assert info["steps"] == 1 and "simpo" in info["trainer"]


# --- Table 1 grid spec -----------------------------------------------------------------------

def test_table1_config_validates():
    from pathlib import Path
    from sdd_bench.harness import grid
    path = Path(__file__).resolve().parent.parent / "configs" / "sdd_table1.yaml"
    cells = grid.expand(grid.load_grid(path))
    seen = {(c.defense, c.attack) for c in cells}
    for d in ("none", "refusal-sft", "sdd", "sdd-reject") + BASELINES:
        for a in ("advbench-10", "advbench-50", "advbench-100"):
            assert (d, a) in seen
