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

from sonicpi_gen.dataset import REPO_ID_PLACEHOLDER
from sonicpi_gen.folders import write_atomically

logger = logging.getLogger(__name__)

REPO_TYPE = "dataset"
# Hub repository ids: namespace/name, letters, digits, '-', '_', '.' (no leading '.' or '-').
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
NO_TOKEN_MESSAGE = ("no Hugging Face token found: log in with `huggingface-cli login` (`hf auth "
                    "login` in recent huggingface_hub) or set HF_TOKEN to a token with write "
                    "access, then run the command again (--dry-run needs no token)")


# The card's paragraph saying the id is not set (dataset_card.md), removed once it is.
REPO_ID_NOTICE_RE = re.compile(r"<!-- repo-id-notice.*?<!-- /repo-id-notice -->\n*", re.S)


class PublishError(ValueError):
    """The folder, the repository id or the credentials do not allow the upload."""


@dataclass
class PublishResult:
    repo_id: str
    files: list  # (path relative to the folder, bytes), in upload order
    uploaded: bool
    url: str | None = None
    card_filled: bool = False  # the card said ORG/NAME: the repo id was (or, dry run, would be) written in

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


def fill_repo_id(card: Path, repo_id: str, dry_run: bool = False) -> bool:
    """Write repo_id where a card built without --repo-id says ORG/NAME, and drop its
    "Repository id not set" paragraph (atomically). Returns whether the card said ORG/NAME;
    with dry_run the file is left as it is."""
    card = Path(card)
    text = card.read_text()
    if REPO_ID_PLACEHOLDER not in text:
        if f"datasets/{repo_id}" not in text:
            logger.warning("%s names another repository than %s; rebuild it with --repo-id %s "
                           "for a card whose examples load this one", card, repo_id, repo_id)
        return False
    if not dry_run:
        filled = REPO_ID_NOTICE_RE.sub("", text).replace(REPO_ID_PLACEHOLDER, repo_id)
        write_atomically(card, lambda tmp: tmp.write_text(filled))
    logger.info("%s: %s %s in place of %s", card, "would write" if dry_run else "wrote", repo_id,
                REPO_ID_PLACEHOLDER)
    return True


def publish_dataset(dataset_dir: Path, repo_id: str, *, private: bool = False, dry_run: bool = False,
                    token: str | None = None) -> PublishResult:
    """Create the Hub dataset repository (if needed) and upload the folder to it.

    A card built without --repo-id (its examples say ORG/NAME) gets repo_id written in
    first (fill_repo_id), so the published card loads the repository it is in.

    Args:
        dataset_dir: a folder made by build_dataset (README.md, data/<config>/*.parquet).
        repo_id: ORG/NAME on the Hub.
        private: create the repository private (an existing one keeps its visibility).
        dry_run: only list the files and sizes that would go up; needs no token, and
            leaves the card as it is.
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
    # A card built without --repo-id gets the id now, so its examples load this repository.
    filled = fill_repo_id(dataset_dir / "README.md", repo_id, dry_run)
    files = list_upload_files(dataset_dir)
    if dry_run:
        return PublishResult(repo_id, files, uploaded=False,
                             url=f"https://huggingface.co/datasets/{repo_id}", card_filled=filled)
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
    return PublishResult(repo_id, files, uploaded=True, url=str(url), card_filled=filled)
