"""`python -m voxgate.bench` = `voxgate bench`."""

from voxgate.bench.cli import bench

if __name__ == "__main__":
    bench(prog_name="python -m voxgate.bench")
