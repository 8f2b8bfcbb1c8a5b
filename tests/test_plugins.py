"""The plugin contract (issue 40): a third-party defense installed through an entry point, exactly as
docs/write_a_defense.md shows it, runs through the pipeline; registrations that break the contract are refused with
one error naming what is missing and the fix.  Tiny profile; no network."""
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdd_bench.defenses.base import BuiltData, Context, Defense
from sdd_bench.harness import pipeline, plugins
from sdd_bench.harness.errors import ConfigError, RegistryError
from sdd_bench.harness.registry import ATTACKS, DEFENSES

plugins.declare()  # the built-in plugins, as the CLI declares them
DOC = Path(__file__).resolve().parent.parent / "docs" / "write_a_defense.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture()
def installed(tmp_path, monkeypatch):
    """The docs page's ``my_defense.py`` and its ``pyproject.toml`` entry point, installed as a distribution on
    ``sys.path`` (a ``.dist-info`` with ``entry_points.txt``, what ``pip install`` writes)."""
    (tmp_path / "my_defense.py").write_text(_blocks("python")[0])
    toml = _blocks("toml")[0]
    group, = re.findall(r'\[project\.entry-points\."([^"]+)"\]', toml)
    name, value = re.findall(r'^([\w-]+) = "([^"]+)"$', toml, flags=re.M)[0]
    dist = tmp_path / "my_defense-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-defense\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {value}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(DEFENSES, "_entries", dict(DEFENSES._entries))  # restored after the test
    monkeypatch.setattr(DEFENSES, "_eps_loaded", False)
    yield name
    sys.modules.pop("my_defense", None)


def test_documented_defense_installs_through_its_entry_point_and_runs(installed, tiny_ref, tmp_path):
    assert installed == "refuse-lite" and installed in DEFENSES.names()
    assert dict(DEFENSES.describe())[installed].startswith("(plugin from my-defense)")
    cls = DEFENSES.get(installed)
    assert issubclass(cls, Defense) and cls.registry_name == installed
    # the pipeline resolves it and its preflight sees its harmful prompts (overlap report), as for a built-in
    r = pipeline.resolve(pipeline.spec_from_mapping(dict(defense=installed, attack="beavertails-10", profile="tiny",
                                                         capability=False, n_harmful=4, n_benign=2, n_xstest=2,
                                                         judges=[])))
    sets, built, overlap = pipeline.preflight(r, judges=False)
    assert isinstance(built["defense"], BuiltData) and overlap["sizes"][f"defense:{installed}"] == 8
    new, info = r.defense.defend(tiny_ref, tmp_path / "out", Context(profile="tiny", device="cpu", progress=False),
                                 built=built["defense"])
    assert new.adapter and info["steps"] == 1 and info["data_stats"] == {"rows": 8}


@dataclass(frozen=True)
class _Cfg:
    pass


def test_a_defense_missing_a_method_is_refused_with_the_fix():
    class NoDefend(Defense):
        Config = _Cfg

        def build_data(self, seed=0):
            return BuiltData.empty()

    with pytest.raises(RegistryError, match=r"does not implement defend; add `def defend\(self, ref, out_dir, ctx, "
                                            r"built=None\)"):
        DEFENSES.register("no-defend-test")(NoDefend)
    assert "no-defend-test" not in DEFENSES.names()


def test_a_class_that_is_not_a_defense_or_lacks_config_or_built_is_refused():
    class Plain:
        def defend(self, ref, out_dir, ctx):
            pass

    with pytest.raises(RegistryError, match="not a subclass of sdd_bench.defenses.base.Defense"):
        DEFENSES.register("plain-test")(Plain)

    class NoConfig(Defense):
        def build_data(self, seed=0):
            return BuiltData.empty()

        def defend(self, ref, out_dir, ctx, built=None):
            return ref, {}

    with pytest.raises(RegistryError, match="has no Config; set `Config = MyConfig`"):
        DEFENSES.register("no-config-test")(NoConfig)

    class OldSignature(Defense):
        Config = _Cfg

        def build_data(self, seed=0):
            return BuiltData.empty()

        def defend(self, ref, out_dir, ctx):
            return ref, {}

    with pytest.raises(RegistryError, match="defend has no `built` parameter"):
        DEFENSES.register("old-signature-test")(OldSignature)


def test_attack_registrations_are_checked_against_the_attack_contract(monkeypatch):
    with pytest.raises(RegistryError, match="is not an sdd_bench.attacks.base.AttackPreset"):
        ATTACKS.register("not-a-preset-test")(object())
    from sdd_bench.attacks.base import AttackPreset

    class Bad(AttackPreset):
        name, description = "bad-made-test", "makes a non-attack"

        def make(self, profile, user=None):
            return object()

    monkeypatch.setattr(ATTACKS, "_entries", dict(ATTACKS._entries))
    ATTACKS.register("bad-made-test")(Bad())
    with pytest.raises(ConfigError, match="make\\(\\) returned object, not an sdd_bench.attacks.base.Attack"):
        pipeline.resolve(pipeline.RunSpec(attack="bad-made-test", profile="tiny"))


def test_built_data_is_typed():
    with pytest.raises(TypeError, match="BuiltData.rows must be a list"):
        BuiltData(({"prompt": "x"},))
    b = BuiltData([{"prompt": "a"}], harmful_prompts=["a"])
    assert b.harmful_prompts == ("a",) and b.stats == {} and b.parts == {}
