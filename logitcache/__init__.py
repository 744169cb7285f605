"""logitcache: run a teacher once, cache its logits per seeded view, train students from the cache.

The public verbs are re-exported here; the CLI (``logitcache_cli``) is a thin layer over them
and is never imported by the library.
"""

from .datasets import open_dataset
from .dump import DumpConfig, dump
from .errors import LogitcacheError
from .info import cache_info
from .methods import get_method, list_methods, resolve_hparams
from .models import create_model, list_models
from .store.reader import CacheReader
from .teacher_view import TeacherView
from .train import TrainConfig, train
from .verify import verify
from .views import ViewSpec, view_seeds

__all__ = [
    "CacheReader",
    "DumpConfig",
    "LogitcacheError",
    "TeacherView",
    "TrainConfig",
    "ViewSpec",
    "cache_info",
    "create_model",
    "dump",
    "get_method",
    "list_methods",
    "list_models",
    "open_dataset",
    "resolve_hparams",
    "train",
    "verify",
    "view_seeds",
]
