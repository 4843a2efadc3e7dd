"""``python -m bench.wrk``: wrk against a running server with multipart image uploads.

    python -m bench.wrk --url http://127.0.0.1:8000 --endpoint classify --images 'samples/cifar_*.png' \\
        --connections 16 --duration 10
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from bench.loadtest.targets import TargetError, check_target, endpoint_url
from bench.wrk import WrkFailed, WrkMissing, run_wrk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wrk", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (loopback)")
    parser.add_argument("--endpoint", default="classify", help="classify, detect-faces or a /path")
    parser.add_argument("--images", default="samples/cifar_*.png", help="glob of the images to upload")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    images = [Path(p) for p in sorted(glob.glob(args.images))]
    try:
        if not images:
            raise TargetError(f"no images match {args.images!r}")
        url = endpoint_url(check_target(args.url, allow_remote=False), args.endpoint)
        summary = run_wrk(url, images, args.connections, args.duration, args.threads, args.timeout)
    except (TargetError, WrkMissing, WrkFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
