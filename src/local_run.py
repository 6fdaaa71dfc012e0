"""Transcribe one file or URL locally, without RunPod, and print the JSON result.

    python src/local_run.py AUDIO [--language ru] [--diarization] [--no-align] [--debug]

The request goes through the same ``handler`` a RunPod job does; local paths are allowed, and
``WARMUP`` defaults to false (set it to warm up anyway).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", help="local path or http(s) URL")
    parser.add_argument("--language", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--diarization", action="store_true", help="label speakers")
    parser.add_argument("--no-align", action="store_true", help="skip word alignment")
    parser.add_argument("--output-format", default=None, choices=["json", "srt", "vtt", "txt", "tsv"])
    parser.add_argument("--response-format", default=None,
                        choices=["json", "text", "srt", "vtt", "verbose_json", "diarized_json"],
                        help="answer in OpenAI's transcription shape (text formats print as they are)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    os.environ.setdefault("ALLOW_LOCAL_FILES", "true")
    # One job per process: a warm-up protects the next job, and there is none. It also kept the
    # process alive after the answer until the diarization lane's warm-up ended (~4 s on this
    # project's 2-core CPU: 25.1 s -> 20.8 s for README command 1, one run each).
    os.environ.setdefault("WARMUP", "false")
    from handler import get_settings, handler
    from logs import setup_logging

    # The handler's first job sets the worker up; a bad ENV value is answered as {"error": ...}.
    try:
        settings = get_settings()
        setup_logging(settings.log_path, settings.log_level)
    except ValueError:
        setup_logging()
    job_input: dict = {"audio_file": args.audio, "diarization": args.diarization, "align_output": not args.no_align, "debug": args.debug}
    for key in ("language", "model", "output_format", "response_format"):
        value = getattr(args, key)
        if value is not None:
            job_input[key] = value
    result = handler({"id": "local", "input": job_input})
    if isinstance(result, str):  # OpenAI's text, srt or vtt body
        sys.stdout.write(result)
        return 0
    json.dump(result, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
