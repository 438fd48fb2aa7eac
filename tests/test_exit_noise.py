"""triton's "nanobind: leaked ..." report at interpreter exit is dropped from a command's stderr,
and nothing else is (a real child process, its real stderr pipe)."""

import pytest
from conftest import run_python

LEAK_REPORT = (
    "nanobind: leaked 2 instances!\n"
    ' - leaked instance 0x5581 of type "triton._C.libtriton.ir.context"\n'
    "nanobind: leaked 64 types!\n"
    " - ... skipped remainder\n"
    "nanobind: this is likely caused by a reference counting issue in the binding code.\n"
    "See https://nanobind.readthedocs.io/en/latest/refleaks.html"  # no newline: the last line
)
CHILD = """
import atexit, os, sys, types
sys.modules.setdefault("triton", types.ModuleType("triton"))  # as once torch is imported
from omnisched.exit_noise import drop_teardown_noise
atexit.register(os.write, 2, {report!r})  # runs last: as during the interpreter's teardown
print("result")
sys.stderr.write("a warning\\n")
if {dropped}:
    drop_teardown_noise()
sys.stderr.write("an error after it\\n")
atexit.register(os.write, 2, b"from an exit handler\\n")
"""


@pytest.mark.parametrize("dropped", [True, False])
def test_the_leak_report_at_exit_is_dropped_and_the_rest_of_stderr_kept(dropped):
    proc = run_python("-c", CHILD.format(report=LEAK_REPORT.encode(), dropped=dropped))
    assert proc.stdout == "result\n"
    kept = "a warning\nan error after it\nfrom an exit handler\n"
    assert proc.stderr == (kept if dropped else kept + LEAK_REPORT)
