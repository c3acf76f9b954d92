"""The gateway's parts start in the order `create_app` adds them and close in reverse, each close tried
even when one fails; a start that fails closes what had started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.app import Replacements, create_app
from gateway.lifecycle import Component, ConfigurationError, Lifecycle, close_each, started
from gateway.policy.catalogue import ATTRIBUTES
from gateway.settings import Settings
from tests.support.realm import build_realm


def _part(name: str, seen: list[str], *, fail_start: bool = False, fail_close: bool = False) -> Component:
    def abandon() -> None:
        seen.append(f"abandon {name}")

    async def start() -> None:
        if fail_start:
            raise RuntimeError(f"{name} cannot start")
        seen.append(f"start {name}")

    async def close() -> None:
        seen.append(f"close {name}")
        if fail_close:
            raise RuntimeError(f"{name} cannot close")

    async def ready() -> bool:
        return True

    return Component(name, start, close, {name: ready}, abandon=abandon)


async def test_started_in_order_and_closed_in_reverse_past_a_failing_close() -> None:
    seen: list[str] = []
    lifecycle = Lifecycle()
    lifecycle.add(_part("database", seen), _part("log", seen, fail_close=True), _part("console", seen))
    await lifecycle.start()
    await lifecycle.close()
    assert seen == [
        "start database",
        "start log",
        "start console",
        "close console",
        "close log",
        "close database",
    ]
    assert list(lifecycle.readiness) == ["database", "log", "console"]


async def test_a_failing_start_is_closed_with_the_ones_before_it_and_none_after() -> None:
    seen: list[str] = []
    lifecycle = Lifecycle()
    lifecycle.add(_part("database", seen), _part("log", seen, fail_start=True), _part("console", seen))
    with pytest.raises(RuntimeError, match="log cannot start"):
        await lifecycle.start()
    await lifecycle.close()
    assert seen == ["start database", "abandon console", "close log", "close database"]


async def test_a_readiness_check_is_named_once() -> None:
    lifecycle = Lifecycle()
    lifecycle.add(_part("log", []))
    with pytest.raises(ValueError, match="given twice"):
        lifecycle.add(_part("log", []))


async def test_a_synchronous_start_runs_when_the_component_starts() -> None:
    calls: list[str] = []
    lifecycle = Lifecycle()
    lifecycle.add(Component("reloader", started(lambda: calls.append("scheduled"))))
    assert calls == []
    await lifecycle.start()
    assert calls == ["scheduled"]


async def test_every_step_of_a_close_is_tried_past_a_failing_one() -> None:
    seen: list[str] = []

    def failing() -> None:
        seen.append("writer")
        raise RuntimeError("the writer cannot close")

    async def store() -> None:
        seen.append("store")

    await close_each("the access log", failing, store, lambda: seen.append("slot"))
    assert seen == ["writer", "store", "slot"]


def test_an_app_refused_for_its_settings_lets_go_of_its_log_slot(tmp_path: Path) -> None:
    """A bad connectors file is refused after the access log claimed its slot: the slot is let go at
    once (the refusal's traceback still holds the half-built app), so the next start takes the same one."""
    realm = build_realm(tmp_path)
    bad = tmp_path / "connectors.yaml"
    bad.write_text("connectors: []\n")
    settings = Settings(data_dir=realm.data_dir, policies_dir=realm.policies_dir)
    with pytest.raises(ConfigurationError, match="GATEWAY_CONNECTORS_FILE") as refused:
        create_app(settings.model_copy(update={"connectors_file": bad}))
    assert refused.value.__traceback__ is not None  # the frames that built the slot are still alive
    app = create_app(settings)
    assert app.state.services.log.slot.index == 0
    app.state.services.log.slot.release()


def test_a_console_key_too_short_is_a_configuration_error_naming_its_setting(tmp_path: Path) -> None:
    realm = build_realm(tmp_path)
    short = tmp_path / "console-key"
    short.write_bytes(b"12345678")
    short.chmod(0o600)
    settings = Settings(data_dir=realm.data_dir, policies_dir=realm.policies_dir, console_key_file=short)
    with pytest.raises(ConfigurationError, match="GATEWAY_CONSOLE_KEY_FILE"):
        create_app(settings)


class StaticRegister:
    """A register of one person, meeting the `Connector` protocol: a stand-in passed to `create_app`."""

    name = "register"
    attributes = frozenset(ATTRIBUTES)
    authoritative = True

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.closed = False

    async def fetch(self, nin: str, attributes: frozenset[str], trace: object = None) -> dict[str, Any] | None:
        self.asked.append(nin)
        return {"nin": nin, "family_name": "Traoré", "record_status": "active"} if nin == "AB1234567" else None

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        self.closed = True


async def test_connectors_passed_as_replacements_serve_the_lookups_and_close_with_the_app(tmp_path: Path) -> None:
    realm = build_realm(tmp_path)
    register = StaticRegister()
    app = create_app(
        Settings(data_dir=realm.data_dir, policies_dir=realm.policies_dir),
        replace=Replacements(connectors=[register]),
    )
    async with app.router.lifespan_context(app):
        router = app.state.services.connectors
        person = await router.fetch("AB1234567", frozenset({"family_name", "record_status"}))
        assert person is not None and person["family_name"] == "Traoré"
        assert await router.fetch("ZZ0000000", frozenset({"family_name"})) is None
        assert await app.state.services.readiness["connectors"]() is True
    assert register.asked == ["AB1234567", "ZZ0000000"] and register.closed
