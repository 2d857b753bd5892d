import subprocess
import sys
import textwrap

from streams import memory

# In a process of its own: 64 MB of small blocks from the C heap, touched, then freed behind one block
# still in use, so glibc cannot shrink its heap from the top and keeps the pages.
_FREED_BEHIND_A_BLOCK = textwrap.dedent("""
    import ctypes, ctypes.util, logging, sys
    from streams import memory
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = []
    for _ in range(64 * 1024):
        block = libc.malloc(1000)
        ctypes.memset(block, 1, 1000)
        blocks.append(block)
    pin = libc.malloc(1000)
    for block in blocks:
        libc.free(block)
    before = memory.rss_mb()
    assert memory.trim("the test's blocks were freed")
    print("DROP", before - memory.rss_mb())
""")


def test_trim_gives_back_the_pages_glibc_kept_after_a_large_free():
    out = subprocess.run([sys.executable, "-c", _FREED_BEHIND_A_BLOCK], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    drop = float(out.split("DROP")[1])
    assert drop > 40, out  # of the 64 MB freed
    assert "after the test's blocks were freed:" in out and "given back to the system" in out


def test_rss_is_this_process_resident_memory():
    rss = memory.rss_mb()
    assert rss is not None and 5 < rss < 100_000
