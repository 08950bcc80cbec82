import pytest

from anomaly_zoo.registry import DATAMODULES, MODELS, Registry


def test_register_lookup_and_names():
    registry = Registry("widget")

    @registry.register("b")
    class B:
        pass

    @registry.register("a")
    class A:
        pass

    assert registry["a"] is A and registry["b"] is B
    assert registry.names() == ["a", "b"]
    assert "a" in registry and "c" not in registry
    assert A.registry_name == "a"
    assert registry.name_of(B) == "b"


def test_unknown_name_lists_known_ones():
    registry = Registry("widget")
    registry.register("alpha")(type("Alpha", (), {}))
    with pytest.raises(KeyError, match=r"Unknown widget 'beta'.*alpha"):
        registry["beta"]


def test_name_clash_is_an_error():
    registry = Registry("widget")
    registry.register("x")(type("X1", (), {}))
    with pytest.raises(ValueError, match="already registered"):
        registry.register("x")(type("X2", (), {}))


def test_project_registries_are_populated_lazily():
    assert "feature_distance" in MODELS.names()
    assert "synthetic" in DATAMODULES.names()
    for name in ("mvtec_ad", "visa", "mvtec_loco", "btad", "mpdd", "folder"):
        assert name in DATAMODULES, name
