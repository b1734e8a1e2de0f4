"""The example in docs/adding_a_method.md works and passes the contract test."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

from bench.testing import check_method_contract

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_method.md"


def test_adding_a_method_example_plugs_in(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    # a real module, so that the checkpoint can name the class and `bench evaluate` can import it
    module = types.ModuleType("bench_docs_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    check_method_contract(module.NoisyFeatures, tmp_path)
