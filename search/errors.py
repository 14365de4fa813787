"""What bad input raises: each names the file, key or value and the rule it broke.

The command line exits 2 with the message (`search.cli`), and so does a worker process,
which its supervisor then does not restart (`search.worker`): running again would not help.
"""

from search.checkpoints import CheckpointError
from search.config import ConfigError
from search.dashboard import DashboardError
from search.data import DataError
from search.export import ExportError
from search.kubernetes import ManifestError
from search.settings import SettingsError
from search.slurm import SubmitError
from search.storage import StorageError
from search.study import StudyError
from spaces import SpaceError

USER_ERRORS = (
    CheckpointError,
    ConfigError,
    DashboardError,
    DataError,
    ExportError,
    ManifestError,
    SettingsError,
    SpaceError,
    StorageError,
    StudyError,
    SubmitError,
)
