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


# The files whose module fixtures run for a minute or more go first, so that `make test`'s parallel workers
# (pytest-xdist, one file each at a time) do not end with one of them running alone.
LONG_FIRST = ("test_hub_streaming.py", "test_readme.py", "test_distributed.py", "test_training.py",
              "test_checkpoints.py", "test_budget.py", "test_hub.py")  # fmt: skip


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))  # stable: the order within a file stays
