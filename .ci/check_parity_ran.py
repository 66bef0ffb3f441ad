"""Fail CI unless the PyTorch parity tests and the MPI (SyncBatchNorm) tests ran and
none of them was skipped."""
import sys
import xml.etree.ElementTree as ET

REQUIRED = {"torch parity": "test_torch_parity", "MPI (SyncBatchNorm)": "test_sync_mpi"}

testcases = list(ET.parse(sys.argv[1]).iter("testcase"))
for what, module in REQUIRED.items():
    cases = [c for c in testcases if module in c.get("classname", "")]
    skipped = [c for c in cases if c.find("skipped") is not None]
    if not cases or skipped:
        sys.exit(f"{what} tests: {len(cases)} ran, {len(skipped)} skipped; they must all run")
    print(f"{what} tests: {len(cases)} ran, none skipped")
