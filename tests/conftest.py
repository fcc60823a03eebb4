import os


# Streams end each pass with a 5 s sleep (datasets' thread shutdown); tests must not wait for it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import datasets.config

    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
except ImportError:  # pragma: no cover
    pass
