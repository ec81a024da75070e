#!/usr/bin/env bash
# Regenerates every bundled profile in profiles/models/ from the architecture definitions here.
# Run from the repository root with memplan installed with the hf extra: bash profiles/sources/regenerate.sh
set -euo pipefail
out=profiles/models
memplan analyze profiles/sources/gpt2 --out "$out/gpt2.yaml" --json > /dev/null
memplan analyze profiles/sources/bert-base-uncased --out "$out/bert-base-uncased.yaml" --json > /dev/null
memplan analyze profiles/sources/t5-small --out "$out/t5-small.yaml" --json > /dev/null
memplan analyze profiles/sources/llama-7b --out "$out/llama-7b.yaml" --json > /dev/null
memplan analyze profiles/sources/transformer.py --entry transformer_base --name transformer-base --out "$out/transformer-base.yaml" --json > /dev/null
memplan analyze profiles/sources/transformer.py --entry transformer_big --name transformer-big --out "$out/transformer-big.yaml" --json > /dev/null
memplan analyze profiles/sources/resnet.py --entry resnet18_cifar --name resnet18-cifar --out "$out/resnet18-cifar.yaml" --json > /dev/null
memplan analyze profiles/sources/resnet.py --entry resnet50 --name resnet50 --out "$out/resnet50.yaml" --json > /dev/null
memplan analyze profiles/sources/mobilenet_v2.py --name mobilenet-v2 --out "$out/mobilenet-v2.yaml" --json > /dev/null
