"""Fail CI unless the PyTorch parity tests ran and none of them was skipped.

Both modules compare bnorm with torch: tests/test_torch_parity.py (bnorm's own problems)
and tests/test_torch_samples.py (torch's own OpInfo and ModuleInfo samples).
"""
import sys
import xml.etree.ElementTree as ET

MODULES = ("test_torch_parity", "test_torch_samples")

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
