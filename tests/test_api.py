"""The public API is exactly what capsim/__init__.py exports, and the core stays light."""

import subprocess
import types
import sys

import capsim


def test_all_is_sorted_and_exact():
    assert capsim.__all__ == sorted(capsim.__all__)
    # Submodules become attributes once anything imports them; they are not the exported API.
    public = {n for n in dir(capsim) if not n.startswith("_") and not isinstance(getattr(capsim, n), types.ModuleType)}
    assert public | {"__version__"} == set(capsim.__all__)
    assert callable(capsim.simulate)  # the function, not the module of the same name
    for name in capsim.__all__:
        assert hasattr(capsim, name), name


def test_core_imports_no_ui_or_ml_library():
    code = (
        "import sys, capsim, capsim.simulate, capsim.analytic, capsim.cli\n"
        "bad = [m for m in ('streamlit', 'plotly', 'torch', 'onnxruntime') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
