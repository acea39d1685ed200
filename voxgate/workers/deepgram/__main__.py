"""`python -m voxgate.workers.deepgram`: the Deepgram worker process."""

from voxgate.workers.deepgram.routes import HANDLERS
from voxgate.workers.runtime import run

run("deepgram", HANDLERS)
