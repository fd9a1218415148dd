"""``.tar.gz`` archives: safe extraction (:mod:`.extract`) and creation (:mod:`.create`)."""

from smbyoc.archives.create import create_tar_gz, walk_tree, warn_left_out
from smbyoc.archives.extract import ExtractLimits, is_tar_archive, safe_extract

__all__ = ["ExtractLimits", "create_tar_gz", "is_tar_archive", "safe_extract", "walk_tree", "warn_left_out"]
