"""Fail CI unless the PyTorch parity tests and the MPI (SyncBatchNorm) tests ran and
none of them was skipped.

tests/test_torch_parity.py compares bnorm's own problems with torch,
tests/test_torch_samples.py runs torch's own OpInfo and ModuleInfo samples, and
tests/test_sync_mpi.py runs SyncBatchNorm under mpiexec.
"""
import sys
import xml.etree.ElementTree as ET

MODULES = ("test_torch_parity", "test_torch_samples", "test_sync_mpi")

failed = False
testcases = list(ET.parse(sys.argv[1]).iter("testcase"))
for module in MODULES:
    cases = [c for c in testcases if module in c.get("classname", "")]
    skipped = [c for c in cases if c.find("skipped") is not None]
    if not cases or skipped:
        print(f"{module}: {len(cases)} ran, {len(skipped)} skipped; they must all run")
        failed = True
    else:
        print(f"{module}: {len(cases)} ran, none skipped")
sys.exit(1 if failed else 0)
