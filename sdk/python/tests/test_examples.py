"""The README's examples run end to end against a real tesserad."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from .conftest import Broker

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_reads_is_refused_a_write_and_then_sees_its_token_revoked(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("quickstart", EXAMPLES / "quickstart.py")
    assert spec is not None
    assert spec.loader is not None
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    assert quickstart.main(broker.endpoint, str(broker.dir)) == 0
    out = capsys.readouterr().out
    assert "read  -> 200" in out
    assert 'write -> 403 Bearer realm="crm", error="insufficient_scope"' in out
    assert "after -> 401 token has been revoked" in out
