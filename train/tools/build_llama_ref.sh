#!/usr/bin/env bash
# Builds tools/llama_ref against the llama.cpp that cargo already built for the
# runtime (target/release/build/llama-cpp-sys-2-*/out), so both use one llama.cpp.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$(ls -d "$repo"/target/release/build/llama-cpp-sys-2-*/out 2>/dev/null | while read -r d; do
  [[ -f "$d/build/src/libllama.a" ]] && echo "$d"; done | head -1)"
[[ -n "$out" ]] || { echo "no cargo-built llama.cpp under $repo/target; run cargo build --release first" >&2; exit 1; }
src="$(ls -d ~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp | head -1)"
dest="${1:-$here/llama_ref}"
g++ -O2 -std=c++17 -I"$src/include" -I"$src/ggml/include" "$here/llama_ref.cpp" -o "$dest" \
  "$out/build/src/libllama.a" "$out/build/ggml/src/libggml.a" "$out/build/ggml/src/libggml-cpu.a" \
  "$out/build/ggml/src/libggml-base.a" -lpthread -ldl -lm
echo "$dest"
