# keyledger — the two commands a new user needs:
#   make run    run a node (embedded NATS + JetStream, ClickHouse for analytics)
#   make test   run every check and test (installs and starts what it needs)

GO ?= go
DATA ?= ./data
HTTP ?= 127.0.0.1:8080

.PHONY: run run-no-analytics test check build bench bench-all faults fuzz clickhouse-start clickhouse-stop clean

build:
	$(GO) build -o bin/keyledger ./cmd/keyledger

run: build
	./scripts/run.sh --data $(DATA) --http $(HTTP)

run-no-analytics: build
	./bin/keyledger serve --data $(DATA) --http $(HTTP)

test:
	./scripts/test.sh

check:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./verifier/ ./http/ ./nats/ ./events/ ./projector/ .

bench-all: build
	./scripts/bench-deps.sh
	./scripts/clickhouse.sh start
	./bin/keyledger bench all

# The long fault run: each scenario of ./faults for DURATION (default 60s).
faults:
	./scripts/faults.sh $(DURATION)

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 30s .
	$(GO) test -run '^$$' -fuzz FuzzSum256 -fuzztime 30s ./internal/sha256x/
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 30s ./events/
	$(GO) test -run '^$$' -fuzz FuzzKeyUsedJSON -fuzztime 30s ./events/
	$(GO) test -run '^$$' -fuzz FuzzNextUsage -fuzztime 30s ./events/
	$(GO) test -run '^$$' -fuzz FuzzOpen -fuzztime 30s ./events/
	$(GO) test -run '^$$' -fuzz FuzzAuthz -fuzztime 30s ./http/
	$(GO) test -run '^$$' -fuzz FuzzTrustedProxies -fuzztime 30s ./http/
	$(GO) test -run '^$$' -fuzz FuzzFindSecret -fuzztime 30s .
	$(GO) test -run '^$$' -fuzz FuzzParseAllowlist -fuzztime 30s .
	$(GO) test -run '^$$' -fuzz FuzzMergePatch -fuzztime 30s .
	$(GO) test -run '^$$' -fuzz FuzzDecodeReport -fuzztime 30s ./github/
	$(GO) test -run '^$$' -fuzz FuzzReader -fuzztime 30s ./scan/
	$(GO) test -run '^$$' -fuzz FuzzPatch -fuzztime 30s ./admin/
	$(GO) test -run '^$$' -fuzz FuzzDecodeKeyUsed -fuzztime 30s ./analytics/

clickhouse-start:
	./scripts/clickhouse.sh start

clickhouse-stop:
	./scripts/clickhouse.sh stop

clean:
	rm -rf bin
