"""One vocabulary of operations and attributes, typed: the routes' names are operations the log records,
and the derived lists say what they claim to."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from fastapi.routing import APIRoute

from gateway.app import create_app
from gateway.middleware import is_logged
from gateway.policy.catalogue import (
    ATTRIBUTES,
    CLAIMS,
    EVENT_OPERATIONS,
    RECORDED_OPERATIONS,
    UNAUTHENTICATED,
    RecordedOperation,
    is_event_operation,
)
from gateway.settings import Settings
from tests.support.realm import build_realm


def test_every_logged_route_is_named_for_an_operation_the_log_records(tmp_path: Path) -> None:
    realm = build_realm(tmp_path)
    app = create_app(Settings(data_dir=realm.data_dir, policies_dir=realm.policies_dir))
    logged = [r for r in app.routes if isinstance(r, APIRoute) and is_logged(r.path)]
    assert len(logged) > 20
    unnamed = [(r.path, r.name) for r in logged if not is_event_operation(r.name)]
    assert unnamed == []


def test_the_derived_lists_hold_what_they_say() -> None:
    assert list(CLAIMS) == [a for a in ATTRIBUTES if a != "nin"]
    assert len(set(EVENT_OPERATIONS)) == len(EVENT_OPERATIONS)
    assert get_args(RecordedOperation) == RECORDED_OPERATIONS  # the type and the list an audit filter takes
    assert (
        not is_event_operation(UNAUTHENTICATED) and not is_event_operation("verify ") and is_event_operation("verify")
    )
