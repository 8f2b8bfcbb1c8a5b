"""Activation checkpointing is an execution setting: it must not change what training produces."""
import pytest

PAIRS = [{"prompt": "Name a fruit.", "response": "Apple, a sweet fruit that grows on trees."},
         {"prompt": "Name a colour.", "response": "Blue, the colour of a clear sky."},
         {"prompt": "Say hello.", "response": "Hello! How can I help you today?"}] * 4


def _weights(path):
    from safetensors.torch import load_file
    files = sorted(path.glob("*.safetensors"))
    assert files, f"no weights under {path}"
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_checkpointing_gives_bit_identical_weights(tiny_ref, tmp_path, monkeypatch, lora):
    from sdd_bench.harness.training import CHECKPOINTING_ENV, TrainConfig, train_sft
    cfg = TrainConfig(lr=1e-2, max_steps=3, batch_size=4, lora=lora, lora_r=4, seed=3)
    got = {}
    for mode in ("off", "on"):
        monkeypatch.setenv(CHECKPOINTING_ENV, mode)
        _, info = train_sft(tiny_ref, PAIRS, cfg, tmp_path / mode, "chat", device="cpu", progress=False, name="ckpt")
        assert info["activation_checkpointing"] is (mode == "on")
        assert info["train_config"]["gradient_checkpointing"] is False  # the config (and so every key) is unchanged
        got[mode] = (_weights(tmp_path / mode / "model"), info["losses"])
    (w_off, l_off), (w_on, l_on) = got["off"], got["on"]
    assert l_off == l_on
    assert w_off.keys() == w_on.keys()
    for k in w_off:
        assert (w_off[k] == w_on[k]).all(), f"{k} differs with activation checkpointing"
    # and training did something (the comparison is not between two untouched copies)
    import torch
    from sdd_bench.harness import models
    base, _ = models.load(tiny_ref, device="cpu")
    if not lora:
        sd = base.state_dict()
        changed = sum(not torch.equal(sd[k], w_off[k]) for k in w_off if k in sd)
        assert changed > 0
    else:
        assert any(v.abs().sum() > 0 for k, v in w_off.items() if "lora_B" in k)


def test_checkpointing_policy(monkeypatch):
    from sdd_bench.harness.errors import ConfigError
    from sdd_bench.harness.training import CHECKPOINTING_ENV, activation_checkpointing
    monkeypatch.delenv(CHECKPOINTING_ENV, raising=False)
    assert activation_checkpointing("cpu") and not activation_checkpointing("cuda:0")
    monkeypatch.setenv(CHECKPOINTING_ENV, "on")
    assert activation_checkpointing("cuda")
    monkeypatch.setenv(CHECKPOINTING_ENV, "off")
    assert not activation_checkpointing("cpu")
    monkeypatch.setenv(CHECKPOINTING_ENV, "sometimes")
    with pytest.raises(ConfigError, match="cpu \\| on \\| off"):
        activation_checkpointing("cpu")


def test_diverged_training_fails_the_stage_and_stores_nothing(tiny_ref, tmp_path, session_store):
    """Issue 38: --attack-lr 1e30 is finite, so it passes validation; the run must fail, not become a record."""
    from sdd_bench.harness import pipeline
    from sdd_bench.harness.errors import TrainingDivergedError
    from sdd_bench.harness.training import TrainConfig, train_sft
    with pytest.raises(TrainingDivergedError, match=r"training diverged at lr 1e\+30"):
        train_sft(tiny_ref, PAIRS, TrainConfig(lr=1e30, max_steps=2, batch_size=4), tmp_path / "x", "chat",
                  device="cpu", progress=False, name="attack:test")
    spec = pipeline.spec_from_mapping(dict(profile="tiny", capability=False, n_harmful=2, n_benign=1, n_xstest=0,
                                           judges=[], attack="beavertails-10", attack_options={"lr": 1e30}))
    with pytest.raises(TrainingDivergedError, match="attack:beavertails-10"):
        pipeline.run_cell(spec, session_store, progress=False, log=lambda *_: None)
    assert pipeline.finished_record(session_store, pipeline.resolve(spec)) is None
    # a sane run passes the same check
    train_sft(tiny_ref, PAIRS, TrainConfig(lr=1e-2, max_steps=2, batch_size=4), tmp_path / "ok", "chat",
              device="cpu", progress=False, name="attack:test")
