#!/usr/bin/env bash
# Regenerates the pictures of README's 5-minute tour (docs/tour/) by running the tour's own commands: every
# line of README.md between the "tour:begin" and "tour:end" markers that starts with "clipstudio " is run as
# written, in docs/tour/, so the commands README shows and the pictures it shows are the same by construction
# (tests/test_tour.py checks that each picture comes from one of those commands).
#
#   docs/make_tour.sh                                        # with the clipstudio command on PATH
#   CLIPSTUDIO="python -m clipstudio.cli" docs/make_tour.sh  # from a source checkout (PYTHONPATH=$PWD)
#
# Offline, the latent generator's TAEF2 files are taken from $CLIPSTUDIO_WEIGHTS, or else from the project's
# shared folder ($CLIPSTUDIO_SHARED/weights, default ../shared/weights) when it has them. Each command's wall
# and CPU seconds are printed after it (bash's `time`), for README's "first 10 minutes" table.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
readme="$here/../README.md"
clipstudio="${CLIPSTUDIO:-clipstudio}"
shared="${CLIPSTUDIO_SHARED:-$here/../../shared}"
if [[ -z "${CLIPSTUDIO_WEIGHTS:-}" && -d "$shared/weights/taef2" ]]; then
    export CLIPSTUDIO_WEIGHTS="$shared/weights"
fi

mapfile -t commands < <(sed -n '/<!-- tour:begin -->/,/<!-- tour:end -->/p' "$readme" | grep '^clipstudio ')
if (( ${#commands[@]} == 0 )); then
    echo "make_tour.sh: no 'clipstudio ...' lines between the tour markers of $readme" >&2
    exit 1
fi

rm -rf "$here/tour"
mkdir "$here/tour"
cd "$here/tour"   # README's tour runs in a folder of its own
TIMEFORMAT='  %R s wall, %U s user + %S s sys CPU'
for command in "${commands[@]}"; do
    echo "\$ $command"
    time eval "$clipstudio ${command#clipstudio }"
done
rm -rf zoom_frames   # the GIF holds the frames; the PNGs would only double the repository's share
du -sh "$here/tour"
