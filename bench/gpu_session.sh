#!/usr/bin/env bash
# One lent-GPU session, run as one command on the GPU machine from the repository root:
# with PRESETS=1 the presets' GPU benchmark first (issue 19; its figures of 2026-11-30 are
# in bench/results/gpu-h200), then the blind CT denoisers' training ladder (issue 15) in
# the time left: the shipped f12 and f8 fine-tuned with recorruption against the
# references' own noise on the fan-beam bank (docs/ct-denoising.md, fifth round; judge the
# cards with bench/recorruption_check.py and bench/blind_candidate_check.py). Results go to
# $OUT (the ladder's cards, weights and logs as a split tar archive: the device tool returns
# files of at most 16 MiB).
#   OUT=/tmp/out LIMIT=570 bash bench/gpu_session.sh
# Needs var/gpu/training-set.npz (pacs-lab export-training-set var/gpu/training-set.npz
# --phantoms 24) carried along. The run of 2026-11-30 trained the three networks side by
# side (without --one-at-a-time); they trained 2-3 times slower than timed
# (docs/ct-denoising.md, fourth round), hence --one-at-a-time now.
set -u
START=$(date +%s)
LIMIT=${LIMIT:-570}
OUT=${OUT:?set OUT}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" \
  | tee -a "$OUT/nvidia-smi.txt"
if [ "${PRESETS:-0}" = 1 ]; then
  timeout 240 python3 bench/gpu_presets.py --out "$OUT/gpu-presets.json" \
    --real var/gpu/training-set.npz --slices 512 --full-sampler > "$OUT/gpu-presets.log" 2>&1
  echo "presets benchmark: exit $? after $(( $(date +%s) - START )) s"
fi
LEFT=$(( START + LIMIT - $(date +%s) - 35 ))
echo "ladder budget: $LEFT s"
python3 -m lab.gpu_ladder var/gpu/training-set.npz /tmp/ladder --budget "$LEFT" \
  --features --fine-tune models/weights/ct-denoise-resunet-f12.json \
  models/weights/ct-denoise-resunet-f8.json --recorrupt-alpha 0.5 --version 0.5.0 \
  --draws 32 --batch-size 64 --patch 128 --patch-sampling device --one-at-a-time \
  --noise-cache /tmp/noise-bank \
  > "$OUT/ladder.log" 2>&1
echo "ladder: exit $? after $(( $(date +%s) - START )) s"
tar czf - -C /tmp ladder | split -b 15m - "$OUT/ladder.tar.gz."
ls -la "$OUT"
echo "done after $(( $(date +%s) - START )) s"
