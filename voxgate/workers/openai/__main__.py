"""`python -m voxgate.workers.openai`: the OpenAI worker process."""

from voxgate.workers.openai.routes import HANDLERS
from voxgate.workers.runtime import run

run("openai", HANDLERS)
