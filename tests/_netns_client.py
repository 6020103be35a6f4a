"""Client used by test_multinode (inside a network namespace, or on this host): prints one JSON line per result."""

from __future__ import annotations

import json
import sys

from spava.runtime.pipeline import Pipeline, RequestError


def main(address: str, secret: str, mode: str) -> None:
    pipeline = Pipeline.connect(address, secret=secret)
    try:
        pipeline.start()
    except ConnectionError as error:  # e.g. a wrong secret: the server never answers
        print(json.dumps({"ok": False, "kind": "connection", "message": str(error)}), flush=True)
        return
    with pipeline:
        if mode == "status":
            status = pipeline.status()
            print(json.dumps({"is_healthy": status.is_healthy, "detail": status.detail}), flush=True)
            return
        tokens = 2 if mode == "short" else 4000
        try:
            result = pipeline.run(None, "Tell me about the sea.", max_new_tokens=tokens, ignore_eos=True,
                                  timeout_s=120 if mode == "short" else 300)
            print(json.dumps({"ok": True, "tokens": len(result.token_ids), "world_size": result.world_size}),
                  flush=True)
        except RequestError as error:
            print(json.dumps({"ok": False, "stage": error.stage, "kind": error.kind, "message": str(error)}),
                  flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
