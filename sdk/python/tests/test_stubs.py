"""The committed gRPC stubs are exactly what grpcio-tools makes from proto/."""

from __future__ import annotations

import filecmp
import importlib.util
import pathlib
import sys
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
COMMITTED = HERE.parent / "src" / "tessera_sdk" / "_pb"


def _gen_module() -> Any:
    spec = importlib.util.spec_from_file_location("gen_stubs", HERE.parent / "scripts" / "gen_stubs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_stubs"] = module
    spec.loader.exec_module(module)
    return module


def _files(root: pathlib.Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_committed_stubs_match_the_proto_files(tmp_path: pathlib.Path) -> None:
    _gen_module().generate(tmp_path)
    fresh, committed = _files(tmp_path), _files(COMMITTED)
    assert fresh == committed, "stub files differ: run `python scripts/gen_stubs.py`"
    differ = [name for name in sorted(fresh) if not filecmp.cmp(tmp_path / name, COMMITTED / name, shallow=False)]
    assert not differ, f"stale stubs {differ}: run `python scripts/gen_stubs.py` (never edit them)"
