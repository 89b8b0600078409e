"""Peak memory of a landscape-mpi process, for the tests that bound it (test_stream.py, test_groups_setup.py).

`command(*args)` runs ``landscape-mpi ARGS`` in a Python that samples its own /proc/self/status every 2 ms in a
thread and, at exit, writes the peaks to ``$PEAKS_DIR/<MPI rank>`` (a file, not stderr: a rank's line printed at
exit can be lost after MPI_Finalize). Two peaks:

- ``anon``: the largest RssAnon seen, the memory the program allocated (tensors, the heap). The bound the tests
  assert: holding a split or a model shows here for as long as it is held (far longer than 2 ms).
- ``rss``: the kernel's high-water mark (ru_maxrss), which also counts the file pages of mapped libraries. That
  share is not the program's: in a freshly installed environment, where the libraries' files are still in the
  page cache, it measured about 200 MB more than here for the same run (torch's import: 429 MB of file pages
  against 232 MB); and twice in CI a streamed run (test_stream.py) reported 2.5 GB while the dataset's own count
  showed it held one batch (its anonymous peak here: 0.3 GB). Reported, never asserted.
"""

from __future__ import annotations

import json
import sys

WRAPPER = """
import atexit, json, os, resource, runpy, sys, threading, time
rank = next((os.environ[k] for k in ('OMPI_COMM_WORLD_RANK', 'PMI_RANK') if k in os.environ), '0')
peak = [0]
def anon_kb():
    for line in open('/proc/self/status'):
        if line.startswith('RssAnon:'):
            return int(line.split()[1])
    return 0
def sample():
    while True:
        peak[0] = max(peak[0], anon_kb())
        time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
def write():
    peak[0] = max(peak[0], anon_kb())
    with open(os.path.join(os.environ['PEAKS_DIR'], rank), 'w') as f:
        json.dump({'anon': peak[0] / 1024, 'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, f)
atexit.register(write)
sys.argv = ['landscape_mpi'] + sys.argv[1:]
runpy.run_module('landscape_mpi', run_name='__main__')
"""


def command(*args: str) -> list[str]:
    """``python -c WRAPPER ARGS``: landscape-mpi ARGS with its peaks written to $PEAKS_DIR at exit."""
    return [sys.executable, "-c", WRAPPER, *args]


def peaks(folder) -> list[dict[str, float]]:
    """{'anon': MB, 'rss': MB} of each process that wrote to `folder`, in rank order."""
    return [json.loads(p.read_text()) for p in sorted(folder.iterdir(), key=lambda p: int(p.name))]
