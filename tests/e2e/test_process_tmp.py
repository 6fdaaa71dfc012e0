"""The worker process has a temp folder of its own, removed when it stops (issue 13 #8).

Libraries leave files in the temp folder at import and load time (pyannote's ``.ses``,
torch's ``_remote_module_non_scriptable.py``); after hours of jobs they would pile up in the
container's TMPDIR. The worker, started as in production (``python src/handler.py``), puts
them and its per-job folders in a folder of its own and deletes it on SIGTERM.
"""

from __future__ import annotations

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
    with FileServer(media) as files, WorkerApi(tmp_path / "worker.log", TMPDIR=str(base), WARMUP="false") as api:
        envelope = api.runsync({"audio_file": files.url("clip.wav"), "align_output": False})
        assert envelope["status"] == "COMPLETED", envelope
        own = list(base.iterdir())
        # One folder, the process's own, holds everything the libraries wrote.
        assert [p.name.startswith("whisperx-worker-") and p.is_dir() for p in own] == [True], own
        assert any(Path(own[0]).iterdir()), "the libraries' temp files should be in the worker's folder"
        assert not list(own[0].glob("whisperx-job-*")), "the job folder is deleted after the job"
    assert api.proc.returncode is not None
    assert list(base.iterdir()) == [], list(base.iterdir())
