"""Upload a dataset folder to the Hugging Face Hub: `publish_dataset`.

The upload is resumable: huggingface_hub's upload_large_folder (0.25 to 1.x) keeps its
progress in <folder>/.cache/huggingface and skips what is already up; where it is gone
(2.x), upload_folder commits in batches through hf_xet and skips committed files when
run again. Either way, run the same command again after an interruption.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_TYPE = "dataset"
# Hub repository ids: namespace/name, letters, digits, '-', '_', '.' (no leading '.' or '-').
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
NO_TOKEN_MESSAGE = ("no Hugging Face token found: log in with `huggingface-cli login` (`hf auth "
                    "login` in recent huggingface_hub) or set HF_TOKEN to a token with write "
                    "access, then run the command again (--dry-run needs no token)")


class PublishError(ValueError):
    """The folder, the repository id or the credentials do not allow the upload."""


@dataclass
class PublishResult:
    repo_id: str
    files: list  # (path relative to the folder, bytes), in upload order
    uploaded: bool
    url: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def list_upload_files(dataset_dir: Path) -> list[tuple[str, int]]:
    """Files that go up: everything under the folder except hidden paths (.cache/ holds
    the upload's own resume state)."""
    root = Path(dataset_dir)
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files.append((rel.as_posix(), path.stat().st_size))
    return files


def publish_dataset(dataset_dir: Path, repo_id: str, *, private: bool = False, dry_run: bool = False,
                    token: str | None = None) -> PublishResult:
    """Create the Hub dataset repository (if needed) and upload the folder to it.

    Args:
        dataset_dir: a folder made by build_dataset (README.md, data/<config>/*.parquet).
        repo_id: ORG/NAME on the Hub.
        private: create the repository private (an existing one keeps its visibility).
        dry_run: only list the files and sizes that would go up; needs no token.
        token: a Hub token; default huggingface_hub.get_token() (HF_TOKEN, or the one
            saved by `huggingface-cli login`).
    """
    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / "README.md").is_file() or not any(dataset_dir.glob("data/*/*.parquet")):
        raise PublishError(f"{dataset_dir} is not a dataset folder (README.md and "
                           f"data/<config>/*.parquet); build one with `sonicpi-gen dataset build "
                           f"--out {dataset_dir}`")
    if not REPO_ID_RE.match(repo_id):
        raise PublishError(f"repo id {repo_id!r} must be ORG/NAME (letters, digits, '-', '_', '.'), "
                           "e.g. my-org/sonicpi-code-audio")
    files = list_upload_files(dataset_dir)
    if dry_run:
        return PublishResult(repo_id, files, uploaded=False,
                             url=f"https://huggingface.co/datasets/{repo_id}")
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise PublishError(NO_TOKEN_MESSAGE)
    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
    logger.info("uploading %d files (%.1f MB) to %s", len(files), sum(s for _, s in files) / 1e6, url)
    if hasattr(api, "upload_large_folder"):
        api.upload_large_folder(repo_id=repo_id, folder_path=str(dataset_dir), repo_type=REPO_TYPE)
    else:
        api.upload_folder(repo_id=repo_id, folder_path=str(dataset_dir), repo_type=REPO_TYPE,
                          commit_message="Upload dataset with sonicpi-gen",
                          ignore_patterns=[".*", ".*/**", "**/.*", "**/.*/**"])
    return PublishResult(repo_id, files, uploaded=True, url=str(url))
