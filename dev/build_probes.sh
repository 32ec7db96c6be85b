#!/bin/sh
# Builds the dev probes against build/libmodformer_lib.a (run from the repo root after cmake --build build).
set -e
for p in flash_probe flash_loop flash_tune decode_probe tile_rows_probe linformer_probe; do
  g++ -O3 -march=native -std=c++20 -fopenmp -Isrc dev/$p.cpp build/libmodformer_lib.a \
    -L/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -ldnnl -o build/$p
done
g++ -O3 -march=native -std=c++20 -Isrc dev/tile_probe.cpp -o build/tile_probe
# The FNet probe compares with kissfft (Debian libkissfft-dev), which the engine itself does not use.
if [ -f /usr/include/kissfft/kiss_fft.h ]; then
  g++ -O3 -march=native -std=c++20 -fopenmp -Isrc dev/fnet_path_probe.cpp build/libmodformer_lib.a \
    -L/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -ldnnl -lkissfft-float -o build/fnet_path_probe
else
  echo "skipping fnet_path_probe: it needs libkissfft-dev"
fi
