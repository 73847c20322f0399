"""`tercet files`: upload, list, download and delete Files API files on a running server.

It speaks the Files API with the official SDK, so it works against any server that has one
(tercet's or Anthropic's). Files belong to the API key used.
"""

from __future__ import annotations

import argparse
import mimetypes
import os
import sys
from pathlib import Path
from typing import Any

import anthropic


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "files", help="manage Files API files on a server", description=__doc__
    )
    parser.add_argument(
        "--base-url",
        default=os.environ.get("ANTHROPIC_BASE_URL", "http://127.0.0.1:8080"),
        help="the server (default $ANTHROPIC_BASE_URL, else http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("ANTHROPIC_API_KEY", "tercet"),
        help="the key whose files these are (default $ANTHROPIC_API_KEY)",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    upload = actions.add_parser("upload", help="upload a file; prints its id")
    upload.add_argument("path", type=Path)
    upload.add_argument("--mime-type", help="default: guessed from the file name")
    listing = actions.add_parser("list", help="list files, newest first")
    listing.add_argument("--limit", type=int, default=100, help="at most this many")
    download = actions.add_parser("download", help="save a downloadable file's content")
    download.add_argument("file_id")
    download.add_argument("-o", "--output", type=Path, help="default: the file's own name")
    delete = actions.add_parser("delete", help="delete files")
    delete.add_argument("file_ids", nargs="+")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    client = anthropic.Anthropic(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    files = client.beta.files
    try:
        if args.action == "upload":
            mime = args.mime_type or mimetypes.guess_type(args.path.name)[0]
            with args.path.open("rb") as source:
                stored = files.upload(
                    file=(args.path.name, source, mime or "application/octet-stream")
                )
            print(stored.id)
        elif args.action == "list":
            for count, stored in enumerate(files.list(limit=min(args.limit, 1000))):
                if count >= args.limit:
                    break
                mark = "downloadable" if stored.downloadable else ""
                print(
                    f"{stored.id}\t{stored.size_bytes}\t{stored.created_at.isoformat()}\t"
                    f"{stored.mime_type}\t{stored.filename}\t{mark}".rstrip()
                )
        elif args.action == "download":
            # Only the last part of the stored name: it is metadata, never a path to follow.
            stored_name = Path(files.retrieve_metadata(args.file_id).filename).name
            safe = stored_name if stored_name not in ("", ".", "..") else args.file_id
            name = args.output or Path(safe)
            files.download(args.file_id).write_to_file(name)
            print(name)
        else:
            for file_id in args.file_ids:
                print(files.delete(file_id).id)
    except anthropic.APIStatusError as exc:
        print(f"error: {exc.status_code} {exc.message}", file=sys.stderr)
        return 1
    except (anthropic.APIConnectionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
