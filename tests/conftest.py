import os

# One thread per rank: multi-process tests share the machine's 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKD_TEST", "1")
