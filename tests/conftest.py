import os
import shutil
import sys

# Triton kernels run under the interpreter on machines without a GPU. The variable must be set before triton is
# first imported (torch may import it), so it is decided here without importing torch.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
