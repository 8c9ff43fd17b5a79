from __future__ import annotations

import pytest

from pipeline.registry import LOSSES, NETWORKS, Registry


def test_register_get_names_and_build():
    reg = Registry("widget")

    @reg.register("small_widget")
    def small(size=1):
        return ("small", size)

    reg.register("big_widget", lambda size=9: ("big", size))
    assert reg.get("small_widget") is small
    assert reg.names() == ["big_widget", "small_widget"]
    assert reg.build("big_widget", size=3) == ("big", 3)
    assert "small_widget" in reg and "nope" not in reg
    assert len(reg) == 2 and list(reg) == ["big_widget", "small_widget"]


def test_duplicate_name_raises():
    reg = Registry("widget")
    reg.register("a", object())
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a", object())


def test_unknown_name_lists_kind_value_close_matches_and_options():
    reg = Registry("network")
    for name in ("unet", "resunet", "denseunet"):
        reg.register(name, object())
    with pytest.raises(
        ValueError, match=r"unknown network 'unte'\. Did you mean 'unet'.*Options: denseunet, resunet, unet"
    ):
        reg.get("unte")
    with pytest.raises(ValueError, match=r"unknown network 'zzz'\. Options: denseunet, resunet, unet$"):
        reg.get("zzz")


@pytest.mark.parametrize("bad", ["", None, 3])
def test_bad_names_rejected(bad):
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        Registry("x").register(bad, object())


def test_project_registries_have_their_kinds():
    assert NETWORKS.kind == "network" and LOSSES.kind == "loss"
