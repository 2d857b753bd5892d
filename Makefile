# The two commands of the README, and a few more for development.
.PHONY: up test down status bootstrap unit

bootstrap:
	@bash infra/bootstrap.sh

up: bootstrap          ## the whole local stack, a demo stream and a live view (Ctrl-C stops it)
	@.venv/bin/herald up

test: bootstrap        ## lint, types, then the whole test suite against the real broker, registry and database
	@.venv/bin/ruff check .
	@.venv/bin/mypy
	@.venv/bin/python -m pytest

unit: bootstrap        ## only the tests that need no server
	@.venv/bin/python -m pytest -m "not integration"

down:
	@.venv/bin/herald down

status:
	@.venv/bin/herald status
