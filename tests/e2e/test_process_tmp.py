"""The worker process has a temp folder of its own, removed when it stops (issue 13 #8).

Libraries leave files in the temp folder at import and load time (pyannote.audio's ``.ses``,
torch's ``_remote_module_non_scriptable.py``, when a requested pyannote pipeline loads them);
after hours of jobs they would pile up in the container's TMPDIR. The worker, started as in
production (``python src/handler.py``), puts them and its per-job folders in a folder of its
own and deletes it on SIGTERM. Since the offline diarization stopped importing pyannote.audio,
a default start-up may write no library file at all, so the redirect is checked on what every
job writes: its job folder, seen while the job runs.
"""

from __future__ import annotations

import threading
from pathlib import Path

from fixtures_audio import CLIP
from references import FESTVOX, require_assets
from servers import FileServer, WorkerApi


def test_worker_temp_files_live_and_die_in_its_own_folder(tmp_path):
    require_assets()
    base = tmp_path / "tmpdir"
    base.mkdir()
    media = tmp_path / "media"
    media.mkdir()
    (media / "clip.wav").write_bytes((FESTVOX / "wav" / f"{CLIP}.wav").read_bytes())
    seen: set[Path] = set()
    job_done = threading.Event()

    def watch_job_folders() -> None:
        # The job folder lives from the download to the result: poll for it while the job runs.
        while not job_done.is_set():
            seen.update(base.rglob("whisperx-job-*"))
            job_done.wait(0.01)

    with FileServer(media) as files, WorkerApi(tmp_path / "worker.log", TMPDIR=str(base), WARMUP="false") as api:
        watcher = threading.Thread(target=watch_job_folders, daemon=True)
        watcher.start()
        try:
            envelope = api.runsync({"audio_file": files.url("clip.wav"), "align_output": False})
        finally:
            job_done.set()
            watcher.join()
        assert envelope["status"] == "COMPLETED", envelope
        own = list(base.iterdir())
        # One folder, the process's own, holds everything the worker and its libraries wrote.
        assert [p.name.startswith("whisperx-worker-") and p.is_dir() for p in own] == [True], own
        assert seen, "the job's folder was never seen in the temp folder"
        assert {path.parent for path in seen} == {own[0]}, seen
        assert not list(own[0].glob("whisperx-job-*")), "the job folder is deleted after the job"
    assert api.proc.returncode is not None
    assert list(base.iterdir()) == [], list(base.iterdir())
