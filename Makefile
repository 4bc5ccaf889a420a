# The two commands a newcomer needs: `make run` serves the bundled example, `make test` runs the tests.
ORT_LIB := .ort/libonnxruntime.so.1.31.1
VENV    := .venv

.PHONY: run test lint bench models models-check ort

run: $(ORT_LIB)
	cargo run --release -- serve

test: $(ORT_LIB)
	cargo test --locked

lint:
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

bench: $(ORT_LIB)
	cargo bench --bench inprocess
	cargo bench --bench loopback

ort: $(ORT_LIB)

$(ORT_LIB):
	scripts/fetch-onnxruntime.sh

$(VENV)/bin/python: training/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r training/requirements.txt
	touch $@

# Retrain and re-export the example bundles (deterministic: the result is byte-identical).
models: $(VENV)/bin/python
	$(VENV)/bin/python training/export_bundle.py --out models

# Fails if re-running the export would change the committed bundles.
models-check: $(VENV)/bin/python
	rm -rf target/models-check
	$(VENV)/bin/python training/export_bundle.py --out target/models-check
	diff -r models target/models-check
