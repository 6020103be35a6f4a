"""`spava serve`: an OpenAI-compatible HTTP server in front of a spava `Pipeline`.

Runs in the process that owns (or connects to) the pipeline: FastAPI routes on a uvicorn event loop
turn `POST /v1/chat/completions` bodies into `Pipeline.submit` calls and stream the answers back as
server-sent events. Needs the `serve` extra (`pip install "spava[serve]"`); nothing here is imported
by `import spava` or `import spava.cli`.

Modules: `options` (server settings, the served model's description), `protocol` (request model and
response builders), `translate` (request -> pipeline call), `media` (file://, data:, http(s)://
URLs), `bridge` (pipeline futures and token streams on the event loop), `errors` (OpenAI error JSON,
HTTP status per failure kind), `metrics` (Prometheus), `chat` (the completion endpoint), `app`
(the app factory), `cli` (argument parsing), `run` (uvicorn).
"""
