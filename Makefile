# The two commands a newcomer needs: `make run` serves the bundled example, `make test` runs the tests.
ORT_LIB := .ort/libonnxruntime.so.1.31.1
VENV    := .venv
DELIVERY_VENV := .venv-delivery

.PHONY: run test lint deny bench models models-check ort delivery-check

run: $(ORT_LIB)
	cargo run --release -- serve

# Every test and check: the crate's tests, the release flow over S3 (an S3-compatible server
# on loopback, from the tools venv), then the delivery checks.
test: $(ORT_LIB) $(DELIVERY_VENV)/bin/python
	cargo test --locked
	PATH="$(CURDIR)/$(DELIVERY_VENV)/bin:$$PATH" cargo test --locked --test release -- --ignored
	$(MAKE) delivery-check

lint:
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

# Licences, bans and sources of every crate against deny.toml (cargo install cargo-deny --locked).
deny:
	cargo deny --log-level error check licenses bans sources

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

$(DELIVERY_VENV)/bin/python: deploy/tools-requirements.txt
	python3 -m venv $(DELIVERY_VENV)
	$(DELIVERY_VENV)/bin/pip install --quiet -r deploy/tools-requirements.txt
	touch $@

# Dockerfile, chart, workflows and scripts: linters, renderers, schema validation, and the
# image contract against the release binary.
delivery-check: $(DELIVERY_VENV)/bin/python $(ORT_LIB)
	cargo build --release --locked
	cargo test --release --locked --test image_contract
	$(DELIVERY_VENV)/bin/python scripts/check_delivery.py target/release/modeld
