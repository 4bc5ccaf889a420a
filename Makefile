# The two commands a newcomer needs: `make run` serves the bundled example, `make test` runs the tests.
ORT_LIB := .ort/libonnxruntime.so.1.31.1
VENV    := .venv
DELIVERY_VENV := .venv-delivery
OIP_VENV := .venv-oip
MLSERVER_VENV := .venv-mlserver
SCORECARDPY_VENV := .venv-scorecardpy
TRACES_VENV := .venv-traces

.PHONY: run test lint deny bench models models-check ort delivery-check python-test python-lint oip-test scorecardpy-test traces-test bench-tracing bench-v2 bench-mlserver bench-scorecard

run: $(ORT_LIB)
	cargo run --release -- serve

# Every test and check: the crate's tests, the release flow over S3 (an S3-compatible server
# on loopback, from the tools venv), the export package against a real daemon, then the
# delivery checks.
test: $(ORT_LIB) $(DELIVERY_VENV)/bin/python
	cargo test --locked
	PATH="$(CURDIR)/$(DELIVERY_VENV)/bin:$$PATH" cargo test --locked --test release -- --ignored
	$(MAKE) python-test
	$(MAKE) oip-test
	$(MAKE) scorecardpy-test
	$(MAKE) traces-test
	$(MAKE) delivery-check

# The export package (python/): lint, then export real pipelines and serve them with the
# debug binary that `cargo test` built.
python-test: $(VENV)/.installed $(ORT_LIB)
	cargo build --locked
	$(MAKE) python-lint
	cd python && MODELD_BIN=$(CURDIR)/target/debug/modeld ../$(VENV)/bin/python -m pytest -q -W ignore::DeprecationWarning

# The Open Inference Protocol (KServe V2) through tritonclient and the kserve SDK against a real
# daemon, in an environment of their own (python/oip/requirements.txt). One process per client:
# both define the same protobuf symbols.
oip-test: $(OIP_VENV)/.installed $(ORT_LIB)
	cargo build --locked
	cd python/oip && for t in test_tritonclient.py test_kserve_sdk.py; do \
		MODELD_BIN=$(CURDIR)/target/debug/modeld ../../$(OIP_VENV)/bin/python -m pytest -q -p no:cacheprovider \
			-W ignore::DeprecationWarning $$t || exit 1; done

$(OIP_VENV)/.installed: python/oip/requirements.txt
	test -x $(OIP_VENV)/bin/python || python3 -m venv $(OIP_VENV)
	$(OIP_VENV)/bin/pip install --quiet -r python/oip/requirements.txt
	touch $@

# scorecardpy's file form, written by scorecardpy in its own environment (it needs pandas < 3),
# exported by the export package's command line and served by a real daemon.
scorecardpy-test: $(SCORECARDPY_VENV)/.installed $(VENV)/.installed $(ORT_LIB)
	cargo build --locked
	cd python/scorecardpy && MODELD_BIN=$(CURDIR)/target/debug/modeld MODELD_BUNDLE_CLI=$(CURDIR)/$(VENV)/bin/modeld-bundle \
		../../$(SCORECARDPY_VENV)/bin/python -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
		-W "ignore:pkg_resources is deprecated:UserWarning" test_scorecardpy.py

$(SCORECARDPY_VENV)/.installed: python/scorecardpy/requirements.txt
	test -x $(SCORECARDPY_VENV)/bin/python || python3 -m venv $(SCORECARDPY_VENV)
	$(SCORECARDPY_VENV)/bin/pip install --quiet -r python/scorecardpy/requirements.txt
	touch $@

# OpenTelemetry traces from a real daemon into a real OTLP receiver (Arize Phoenix), in an
# environment of its own (python/traces/requirements.txt).
traces-test: $(TRACES_VENV)/.installed $(ORT_LIB)
	cargo build --locked
	cd python/traces && MODELD_BIN=$(CURDIR)/target/debug/modeld ../../$(TRACES_VENV)/bin/python -m pytest -q \
		-p no:cacheprovider -W ignore::DeprecationWarning test_traces.py

$(TRACES_VENV)/.installed: python/traces/requirements.txt
	test -x $(TRACES_VENV)/bin/python || python3 -m venv $(TRACES_VENV)
	$(TRACES_VENV)/bin/pip install --quiet -r python/traces/requirements.txt
	touch $@

python-lint: $(VENV)/.installed
	$(VENV)/bin/ruff check python training
	$(VENV)/bin/ruff format --check python training

lint:
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

# Licences, bans and sources of every crate against deny.toml (cargo install cargo-deny --locked).
deny:
	cargo deny --log-level error check licenses bans sources

bench: $(ORT_LIB)
	cargo bench --bench inprocess
	cargo bench --bench loopback

# The V2 faces beside gRPC Predict (h2load), then modeld's V2 gRPC beside MLServer's on the
# same model, each in one run.
bench-v2: $(ORT_LIB)
	cargo bench --bench kserve

# The example scorecard, with and without reason codes, beside the GBDT example on one daemon.
bench-scorecard: $(VENV)/.installed $(ORT_LIB)
	cargo build --release --locked
	$(VENV)/bin/python python/bench/scorecard.py

# Predict with tracing off, at a sampling ratio of 0.01 and at 1.0, exporting to a real receiver.
bench-tracing: $(VENV)/.installed $(TRACES_VENV)/.installed $(ORT_LIB)
	cargo build --release --locked
	$(VENV)/bin/python python/bench/tracing.py

bench-mlserver: $(MLSERVER_VENV)/.installed $(ORT_LIB)
	cargo build --release --locked
	$(MLSERVER_VENV)/bin/python python/bench/mlserver_v2.py

$(MLSERVER_VENV)/.installed: python/bench/mlserver-requirements.txt
	test -x $(MLSERVER_VENV)/bin/python || python3 -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install --quiet -r python/bench/mlserver-requirements.txt
	touch $@

ort: $(ORT_LIB)

$(ORT_LIB):
	scripts/fetch-onnxruntime.sh

# The export package with its pinned dependencies and test tools, installed as a user would.
$(VENV)/.installed: python/pyproject.toml $(wildcard python/modeld_bundle/*.py)
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet "./python[test]"
	touch $@

# Retrain and re-export the example bundles (deterministic: the result is byte-identical).
models: $(VENV)/.installed
	rm -rf models/credit_risk/v1 models/credit_risk/v2 models/credit_scorecard/v1
	$(VENV)/bin/python training/export_bundle.py --out models

# Fails if re-running the export would change the committed bundles.
models-check: $(VENV)/.installed
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
