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
from anthropic.resources.beta.files import Files


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
    download.add_argument(
        "-o",
        "--output",
        type=Path,
        help="a file, or a folder to save it in (default: the file's own name, or its id)",
    )
    download.add_argument("--force", action="store_true", help="overwrite an existing file")
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
            return _download(files, args.file_id, args.output, args.force)
        else:
            for file_id in args.file_ids:
                print(files.delete(file_id).id)
    except anthropic.APIStatusError as exc:
        print(f"error: {exc.status_code} {_api_message(exc)}", file=sys.stderr)
        return 1
    except (anthropic.AnthropicError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _download(files: Files, file_id: str, output: Path | None, force: bool) -> int:
    if output is None or output.is_dir():
        name = _safe_name(files.retrieve_metadata(file_id).filename, file_id)
        output = name if output is None else output / name
    if output.exists() and not force:
        return _refuse_overwrite(output)
    with files.with_streaming_response.download(file_id) as response:
        try:
            # Exclusive unless forced: a file that appeared meanwhile is not overwritten.
            target = output.open("wb" if force else "xb")
        except FileExistsError:
            return _refuse_overwrite(output)
        with target:
            try:
                for chunk in response.iter_bytes():
                    target.write(chunk)
            except BaseException:
                output.unlink(missing_ok=True)  # no half-written file left behind
                raise
    print(output)
    return 0


def _api_message(exc: anthropic.APIStatusError) -> str:
    """The message of an Anthropic error envelope, else the SDK's own text."""
    body = exc.body
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return exc.message


def _refuse_overwrite(output: Path) -> int:
    print(f"error: {output} already exists; pass --force to overwrite it", file=sys.stderr)
    return 1


def _safe_name(stored: str, file_id: str) -> Path:
    """The stored name if it is a plain name in this folder, else the file's id: the name
    is the uploader's metadata, never a path to follow or a dotfile to replace."""
    unsafe = (
        not stored
        or stored.startswith(".")  # also "." and ".."
        or "/" in stored
        or "\\" in stored
        or (os.altsep is not None and os.altsep in stored)
        or "\x00" in stored
    )
    return Path(file_id if unsafe else stored)
