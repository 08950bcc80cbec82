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


def test_declared_entries_are_imported_on_first_lookup(tmp_path, monkeypatch):
    (tmp_path / "lazy_widget_mod.py").write_text(
        "from tests.test_registry import LAZY\n@LAZY.register('w')\nclass Widget:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    LAZY.declare("w", "lazy_widget_mod:Widget")
    assert LAZY.names() == ["w"] and "w" in LAZY
    assert LAZY.class_path("w") == "lazy_widget_mod.Widget"
    import sys

    assert "lazy_widget_mod" not in sys.modules  # names and class paths need no import
    widget = LAZY["w"]
    assert widget.__name__ == "Widget" and widget.registry_name == "w" and "lazy_widget_mod" in sys.modules


def test_declared_target_must_match_the_registered_class():
    registry = Registry("widget")
    registry.declare("x", "somewhere.else:X")
    with pytest.raises(ValueError, match="declared as somewhere.else:X"):
        registry.register("x")(type("X", (), {}))
    with pytest.raises(ValueError, match="module:Class"):
        registry.declare("y", "no_colon.Y")


LAZY = Registry("widget")
