"""The shared facts in systemvm.defaults agree with the boot contract and stay plain strings."""

from __future__ import annotations

from pathlib import Path

from systemvm import contract, defaults, naming
from systemvm.boot.hypervisors.registry import DRIVERS


def test_roles_are_the_contracts_roles_in_order() -> None:
    assert defaults.ROLES == contract.ROLES


def test_every_hypervisor_has_a_driver_and_is_known_to_the_contract() -> None:
    assert set(DRIVERS) == set(defaults.HYPERVISORS)
    assert set(defaults.HYPERVISORS) <= set(contract.HYPERVISORS)


def test_members_are_their_strings() -> None:
    assert defaults.Role.ROUTER == "router"
    assert f"{defaults.Hypervisor.XENSERVER}" == "xenserver"
    assert naming.FLAVOURS == ("amd64", "i386", "arm64")
    assert naming.flavours("all") == ["amd64", "i386", "arm64"]


def test_cache_root_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SYSTEMVM_CACHE", str(tmp_path / "c"))
    assert defaults.cache_root() == tmp_path / "c"
    monkeypatch.delenv("SYSTEMVM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert defaults.cache_root() == tmp_path / "x" / "systemvm"
