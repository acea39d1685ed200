"""`python -m benchmarks` = `voxgate bench` (until the command is registered in voxgate's CLI)."""

from benchmarks.cli import bench

if __name__ == "__main__":
    bench(prog_name="python -m benchmarks")
