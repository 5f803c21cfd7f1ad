"""Running Triton kernels on the CPU: Triton's interpreter in a subprocess (TRITON_INTERPRET=1 must
be set before Triton is imported), with a shim for numpy 2."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Triton 3.5's interpreter turns a loop bound into int(1-element array), which numpy 2.x refuses;
# the kernels loop over runtime bounds (range(0, K, COLS)), so the interpreter gets a scalar index
INTERPRETER_SHIM = """
import triton.runtime.interpreter as _ti
_patch = _ti._patch_lang_tensor
def _patch_lang_tensor(tensor):
    _patch(tensor)
    tensor.__index__ = lambda self: int(self.handle.data.reshape(-1)[0])
_ti._patch_lang_tensor = _patch_lang_tensor
"""


def interpret(code: str, *args: str) -> None:
    """Run `code` (which must print "ok" last) under the interpreter, with `args` as sys.argv[1:]."""
    env = os.environ | {"TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", INTERPRETER_SHIM + code, *args], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
