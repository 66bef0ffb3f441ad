"""Fail CI unless the PyTorch parity tests ran and none of them was skipped."""
import sys
import xml.etree.ElementTree as ET

cases = [c for c in ET.parse(sys.argv[1]).iter("testcase") if "test_torch_parity" in c.get("classname", "")]
skipped = [c for c in cases if c.find("skipped") is not None]
if not cases or skipped:
    sys.exit(f"torch parity tests: {len(cases)} ran, {len(skipped)} skipped; they must all run")
print(f"torch parity tests: {len(cases)} ran, none skipped")
