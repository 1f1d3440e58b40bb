"""`python -m benchmarks.lifelong_gpu lifelong | llama-timing | …`: the name the GPU bundle's calls
use (docs/eval.md, *On a GPU*); the driver is benchmarks/lifelong.py."""

from benchmarks.lifelong import cli

if __name__ == "__main__":
    cli()
