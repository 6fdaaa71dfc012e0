"""Progress updates reach RunPod's job server through the real SDK.

A stub of RunPod's job-done endpoint on 127.0.0.1 records what ``progress_update`` posts while
the worker's handler runs one real job (the SDK reads the endpoint from
``RUNPOD_WEBHOOK_POST_OUTPUT``, as on a RunPod worker)."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import urllib.parse

from references import FESTVOX, ROOT, require_assets
from servers import worker_env


class _Recorder(http.server.BaseHTTPRequestHandler):
    posts: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode("utf-8")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        _Recorder.posts.append({"job": query.get("job", [""])[0], "data": json.loads(body)})
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_progress_updates_are_posted_for_each_stage():
    require_assets()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = worker_env(
            RUNPOD_POD_ID="test-pod",
            RUNPOD_WEBHOOK_POST_OUTPUT=f"http://127.0.0.1:{server.server_address[1]}/done?job=$ID",
            ALLOW_LOCAL_FILES="true",
            WARMUP="false",
        )
        job = {"id": "job-progress-1", "input": {"audio_file": str(FESTVOX / "wav" / "ru_0003.wav"), "diarization": False}}
        code = (
            "import json, sys, time; sys.path.insert(0, 'src'); from handler import handler; "
            f"r = handler({job!r}); time.sleep(1.0); print('RESULT ' + json.dumps(r, ensure_ascii=False))"
        )
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        result_line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
        result = json.loads(result_line[len("RESULT "):])
        assert result["segments"], result
    finally:
        server.shutdown()
        server.server_close()
    updates = [p for p in _Recorder.posts if p["job"] == "job-progress-1" and p["data"].get("status") == "IN_PROGRESS"]
    stages = [u["data"]["output"] for u in updates]
    assert any(s == "download" for s in stages), stages
    assert any(s.startswith("transcribe") for s in stages), stages
    assert any(s == "align" for s in stages), stages
    assert any(s == "transcribe 100%" for s in stages), stages
