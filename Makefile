# tcprtt — eBPF TCP RTT receiver for the OpenTelemetry Collector.
#
#   make otelcol        build build/otelcol-tcprtt/otelcol-tcprtt with ocb from builder-config.yaml
#   sudo make run       build it and run it with testdata/otelcol-debug.yaml (needs root for BPF)
#   make run SUDO=sudo  same, but build as you and only run the collector with sudo
#   make test           gofmt and go vet checks, go test -race on every package but the end-to-end
#                       one, the pure-Go packages 20 times shuffled (kernel tests need root;
#                       TCPRTT_REQUIRE_BPF=1 makes them fail instead of skip)
#   make test-schedules 20000 schedules of the read-path harness (SCHEDULES=N)
#   make generate       regenerate the eBPF object with bpf2go (clang, llvm, libbpf headers)
#   make bench          per-event cost (tcprtt side by side with an empty and a reference-style
#                       program), throughput, kernel memory and scrape benchmarks (as root);
#                       BENCH_FLAGS passes flags to benchtool (go run ./internal/benchtool -h)
#   make bench-variants what each part of the per-segment path costs (benchmark-only variants)
#   make lint           staticcheck
#   make test-kernels   the kernel tests on Debian's 5.10, 6.1 and 6.12 (x86-64) and 6.1 (arm64)
#                       cloud kernels under qemu (tools/kernels; kernels cached in TCPRTT_CACHE)
#   make e2e            end-to-end tests (as root): the collector against an in-process OTLP
#                       endpoint and against a real Prometheus, privileges, config validation;
#                       builds the collector and, once, Prometheus (~7-9 min cold) and kustomize
#   make e2e-kubernetes the Kubernetes manifests applied to a real etcd + kube-apiserver, and the
#                       agent's k8sattributes pipeline against it (as root); builds kube-apiserver
#                       once (~17 CPU-min cold) and unpacks Debian's etcd-server into TCPRTT_CACHE
#   make prometheus     install Prometheus (PROMETHEUS_VERSION) into the cache dir TCPRTT_CACHE
#                       (default ~/.cache/tcprtt, outside the clone) if it is missing
#   make validate-configs  every shipped collector config (README, docs/, testdata/, deploy/, and
#                       what every kustomization renders) passes `otelcol-tcprtt validate`
#   make kustomize      install kustomize (KUSTOMIZE_VERSION) into TCPRTT_CACHE if missing
#   make kube-apiserver build kube-apiserver (tools/kube-apiserver) into TCPRTT_CACHE once (~17 CPU-min)
#   make etcd           unpack Debian's etcd-server into TCPRTT_CACHE if missing
#   make cross          `go build` and test compilation of every package for darwin and windows
#   make cross-otelcol  ocb builds of otelcol-tcprtt for darwin/arm64 and windows/amd64
#   make image          multi-arch (IMAGE_PLATFORMS) OCI image of otelcol-tcprtt without Docker:
#                       build/otelcol-tcprtt.oci.tar (oci-archive) and its layout build/image/oci
#                       (tools/image; reproducible: SOURCE_DATE_EPOCH, default the last commit's time)
#   make promtool       install promtool (PROMETHEUS_VERSION) into TCPRTT_CACHE if it is missing
#   make rules-test     promtool check and unit tests of deploy/prometheus/ (rules and alerts)

# Go toolchain. root's PATH under sudo often lacks /usr/local/go/bin: fall back to it.
ifeq ($(origin GO),undefined)
GO := $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
endif
GO_BIN_DIR := $(patsubst %/,%,$(dir $(shell command -v $(GO) 2>/dev/null || echo $(GO))))
# ocb finds go through PATH, so put the chosen toolchain first.
export PATH := $(GO_BIN_DIR):$(PATH)

# OpenTelemetry Collector Builder (ocb), installed per version under build/ (ignored by git)
# on first use, so a clean clone (CI) needs nothing preinstalled.
OCB_VERSION ?= v0.165.0
OCB_DIR     ?= $(CURDIR)/build/bin/ocb-$(OCB_VERSION)
OCB         ?= $(OCB_DIR)/builder

OTELCOL_NAME   := otelcol-tcprtt
OTELCOL_CONFIG ?= builder-config.yaml
OTELCOL_DIR    := build/$(OTELCOL_NAME)
OTELCOL        := $(OTELCOL_DIR)/$(OTELCOL_NAME)
RUN_CONFIG     ?= testdata/otelcol-debug.yaml
SUDO           ?=

# Tools too slow to rebuild per clone live in a cache outside the clone (CI
# reuses the machine's). Same default as the tests: $XDG_CACHE_HOME or ~/.cache.
TCPRTT_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tcprtt
export TCPRTT_CACHE
# kube-apiserver (tools/kube-apiserver pins k8s.io/kubernetes and its staging modules) and
# Debian's etcd for the e2e tests of the Kubernetes manifests and k8sattributes.
KUBE_VERSION        ?= v1.37.2
KUBE_APISERVER_DIR  ?= $(TCPRTT_CACHE)/kube-apiserver-$(KUBE_VERSION)
KUBE_APISERVER      ?= $(KUBE_APISERVER_DIR)/kube-apiserver
ETCD_DIR            ?= $(TCPRTT_CACHE)/etcd
ETCD                ?= $(ETCD_DIR)/usr/bin/etcd
# kustomize, to build every kustomization under deploy/ in the tests.
KUSTOMIZE_VERSION   ?= v5.7.1
KUSTOMIZE_DIR       ?= $(TCPRTT_CACHE)/kustomize-$(KUSTOMIZE_VERSION)
KUSTOMIZE           ?= $(KUSTOMIZE_DIR)/kustomize
# Prometheus 3 as the e2e backend (module v0.3xx.y = Prometheus 3.xx.y).
PROMETHEUS_VERSION ?= v0.316.0
PROMETHEUS_DIR     ?= $(TCPRTT_CACHE)/prometheus-$(PROMETHEUS_VERSION)
PROMETHEUS         ?= $(PROMETHEUS_DIR)/prometheus
# promtool from the same module version (rule unit tests, rule checks).
PROMTOOL_DIR       ?= $(TCPRTT_CACHE)/promtool-$(PROMETHEUS_VERSION)
PROMTOOL           ?= $(PROMTOOL_DIR)/promtool

# make image: the collector cross-built per platform (static, stripped, no
# build ids or VCS stamps, so the same sources give the same bytes) and
# packed by tools/image into an OCI layout with one multi-platform index.
IMAGE_PLATFORMS ?= linux/amd64 linux/arm64
IMAGE_TAG       ?= 0.0.0-dev
IMAGE_TARBALL   ?= build/$(OTELCOL_NAME).oci.tar
IMAGE_LAYOUT    ?= build/image/oci
# Every timestamp in the image; the last commit's time unless given.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

# make cross: platforms, and an optional grep -E pattern of packages to leave out.
CROSS_PLATFORMS ?= darwin/amd64 darwin/arm64 windows/amd64
CROSS_EXCLUDE   ?=
# make cross-otelcol: platforms built with ocb, each into build/otelcol-tcprtt-OS-ARCH/.
CROSS_OTELCOL_PLATFORMS ?= darwin/arm64 windows/amd64

.DEFAULT_GOAL := otelcol

.PHONY: otelcol run e2e ocb clean prometheus promtool rules-test image validate-configs cross cross-otelcol test test-schedules test-kernels generate bench bench-variants lint kube-apiserver etcd kustomize e2e-kubernetes

# Always hand over to ocb: it regenerates the sources and `go build` is incremental (~seconds warm).
otelcol: $(OCB)
	cd $(CURDIR) && $(OCB) --config $(OTELCOL_CONFIG)

run: otelcol
	$(SUDO) $(OTELCOL) --config $(RUN_CONFIG)

# Packages whose tests need no kernel: make test also runs them 20 times in
# a shuffled order (-short: a tenth of the read-path schedules), so that a
# test that passes by luck of an order fails here.
PURE_PKGS ?= ./internal/bucket/ ./internal/kmaps/ ./internal/lifecycle/ ./internal/convert/ ./internal/reader/ ./internal/netfilter/

# Every package but the end-to-end one, which make e2e runs (once per CI run).
test:
	@unformatted=$$(find . -name '*.go' -not -path './build/*' -not -path './.git/*' | xargs gofmt -l); \
		if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 40m $$($(GO) list ./... | grep -v /internal/e2e)
	$(GO) test -short -count=20 -shuffle=on $(PURE_PKGS)
	# The sweep of every uint32 value through the bucket tables is excluded
	# under -race (minutes there, ~20 s without).
	$(GO) test -count=1 -run TestExhaustive ./internal/bucket/

# More schedules of the read-path harness (internal/reader): a seed that
# fails replays with go test ./internal/reader -run TestSchedules -seed=N.
SCHEDULES ?= 20000
test-schedules:
	$(GO) test -count=1 -run TestSchedules ./internal/reader/ -schedules=$(SCHEDULES)

# Boots each kernel of tools/kernels/matrix under qemu (TCG) and runs the
# loader's, the receiver's, the command's and the oracle's kernel tests
# inside; one result line per kernel. KERNELS=5.10/amd64 (space-separated) runs only those.
KERNELS ?=
test-kernels:
	GO=$(GO) tools/kernels/run.sh $(KERNELS)

generate:
	$(GO) generate ./bpf/

# staticcheck, pinned, on top of the vet run by make test.
STATICCHECK_VERSION ?= v0.7.0
lint:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	cd tools/image && $(GO) vet ./... && $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# Cost of the program and the receiver (as root): per-event run time side by
# side with the empty and the reference-style program (bpf/bench.bpf.c) in
# every attach order over several rounds, throughput A/B, kernel memory, a
# summary table (build/bench.txt); then the scrape benchmarks (read vs
# read+convert, 100/1k/10k series) and receiver heap, and the conversion alone
# with and without downscaling (max_buckets).
BENCH_FLAGS ?=
bench:
	@mkdir -p build
	bash -o pipefail -c '$(GO) run ./internal/benchtool $(BENCH_FLAGS) | tee build/bench.txt'
	$(GO) test -run '^$$' -bench . -benchmem -count=1 ./internal/loader/ ./internal/convert/ | tee build/bench-go.txt
	@awk '/^BenchmarkRead\/series=/ { split($$1, a, "[=-]"); r[a[2]] = $$3 } \
	     /^BenchmarkScrape\/series=/ { split($$1, a, "[=-]"); s[a[2]] = $$3 } \
	     END { print "\n3. Scrape (read + convert to pmetric) vs the bare map read, ns/op:"; \
	           n = split("100 1000 10000", sizes, " "); \
	           for (i = 1; i <= n; i++) { k = sizes[i]; \
	               printf "   %5d series: read %11d  scrape %11d  ratio %.2f  (%.0f ns/series)\n", \
	                   k, r[k], s[k], s[k] / r[k], s[k] / k } }' build/bench-go.txt
	@awk 'BEGIN { print "\n4. Convert to pmetric only (10k series, no kernel), ns/op: scale 3 x 30 buckets; scale 8 x 400 buckets" \
	              " unbounded (max=0) and with max_buckets 160 (merged into 101 buckets at scale 6):" } \
	     /^BenchmarkAppend(Scale8)?\// { n = $$1; sub(/-[0-9]+$$/, "", n); \
	           printf "   %-52s %11d  (%.0f ns/series)\n", n, $$3, $$3 / 10000 }' build/bench-go.txt
	@awk '/^BenchmarkRetransmitProgram/ { for (i = 3; i < NF; i++) { if ($$(i+1) == "ns/run") ns = $$i; if ($$(i+1) == "runs/op") r = $$i; \
	           if ($$(i+1) == "settle-ns/run") sns = $$i; if ($$(i+1) == "settle-runs/op") sr = $$i } } \
	     END { print "\n5. Retransmit program (tcp_retransmit_skb), per run under real loss (bpf_stats):"; \
	           printf "   %s ns/run over %s runs per 1 MiB transfer with every 7th data segment dropped\n", ns, r; \
	           printf "   state-change program (inet_sock_set_state): %s ns/run over %s runs per connection\n", sns, sr }' build/bench-go.txt
	@awk '/^BenchmarkConnectionChurn\/retransmits=off/ { off = $$3 } /^BenchmarkConnectionChurn\/retransmits=on/ { on = $$3 } \
	     END { print "\n6. A short loopback connection (dial, accept, a byte each way, close), ns/op:"; \
	           printf "   RTT programs only %s, with the retransmit and state-change programs %s\n", off, on }' build/bench-go.txt

# The cost of each part of tcprtt's per-segment path on this host, as
# benchmark-only variants of it (bench_variant in bpf/bench.bpf.c).
bench-variants:
	@mkdir -p build
	bash -o pipefail -c '$(GO) run ./internal/benchtool -sections variants $(BENCH_FLAGS) | tee build/bench-variants.txt'

# The image and rule tests run here only (TCPRTT_IMAGE, TCPRTT_PROMTOOL), as does the
# whole e2e package: make test leaves it out, so CI runs it once.
e2e: otelcol prometheus promtool image kustomize kube-apiserver etcd
	TCPRTT_OTELCOL=$(CURDIR)/$(OTELCOL) TCPRTT_PROMETHEUS=$(PROMETHEUS) TCPRTT_REQUIRE_BPF=1 \
		TCPRTT_IMAGE=$(CURDIR)/$(IMAGE_TARBALL) TCPRTT_IMAGE_TAG=$(IMAGE_TAG) TCPRTT_PROMTOOL=$(PROMTOOL) \
		TCPRTT_KUSTOMIZE=$(KUSTOMIZE) TCPRTT_KUBE_APISERVER=$(KUBE_APISERVER) TCPRTT_ETCD=$(ETCD) \
		$(GO) test -count=1 -v ./internal/e2e/

# The shipped Kubernetes manifests applied to a real etcd + kube-apiserver, and the agent's
# k8sattributes pipeline run against it (as root).
e2e-kubernetes: otelcol kustomize kube-apiserver etcd
	TCPRTT_OTELCOL=$(CURDIR)/$(OTELCOL) TCPRTT_REQUIRE_BPF=1 TCPRTT_KUSTOMIZE=$(KUSTOMIZE) \
		TCPRTT_KUBE_APISERVER=$(KUBE_APISERVER) TCPRTT_ETCD=$(ETCD) \
		$(GO) test -count=1 -v -run '^TestKubernetesAPIServer$$' ./internal/e2e/

# Installed only if missing: `go install` writes the binary last, so an
# interrupted build leaves nothing behind.
prometheus: $(PROMETHEUS)

$(PROMETHEUS):
	@echo "building Prometheus $(PROMETHEUS_VERSION) into $(PROMETHEUS_DIR) (about 7-9 minutes cold)"
	cd / && GOBIN=$(PROMETHEUS_DIR) $(GO) install github.com/prometheus/prometheus/cmd/prometheus@$(PROMETHEUS_VERSION)

promtool: $(PROMTOOL)

$(PROMTOOL):
	cd / && GOBIN=$(PROMTOOL_DIR) $(GO) install github.com/prometheus/prometheus/cmd/promtool@$(PROMETHEUS_VERSION)

rules-test: promtool
	$(PROMTOOL) check rules deploy/prometheus/*.rules.yaml
	$(PROMTOOL) test rules deploy/prometheus/tests/*.yaml

# ocb generates the collector's main module under $(OTELCOL_DIR) (make
# otelcol); each platform is a plain cross-build of it. -trimpath,
# -buildvcs=false and an empty build id keep paths, the checkout's state and
# the host out of the binary.
image: otelcol
	@set -e; args=; for p in $(IMAGE_PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; out=$(CURDIR)/build/image/$$os-$$arch/$(OTELCOL_NAME); \
		echo "go build GOOS=$$os GOARCH=$$arch -> $$out"; \
		(cd $(OTELCOL_DIR) && CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -buildvcs=false \
			-ldflags='-s -w -buildid=' -o $$out .); \
		args="$$args -binary $$p=$$out"; \
	done; \
	cd tools/image && SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(GO) run . $$args -tag $(IMAGE_TAG) \
		-layout $(CURDIR)/$(IMAGE_LAYOUT) -tarball $(CURDIR)/$(IMAGE_TARBALL)

# Needs no privileges: validate only builds and checks the config.
validate-configs: otelcol kustomize
	TCPRTT_OTELCOL=$(CURDIR)/$(OTELCOL) TCPRTT_KUSTOMIZE=$(KUSTOMIZE) $(GO) test -count=1 -v -run '^(TestConfigsValidate|TestDeployManifests|TestKustomizations)$$' ./internal/e2e/

# The receiver's factory exists on every platform (Start fails there), so a
# multi-platform collector build that includes tcprtt must compile. Test files
# are compiled too (run with -exec true, i.e. not run).
cross:
	@set -e; for p in $(CROSS_PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; \
		pkgs=$$(GOOS=$$os GOARCH=$$arch $(GO) list ./... | { grep -Ev '$(or $(CROSS_EXCLUDE),^$$)' || true; }); \
		echo "GOOS=$$os GOARCH=$$arch: go build, then test compilation"; \
		GOOS=$$os GOARCH=$$arch $(GO) build $$pkgs; \
		GOOS=$$os GOARCH=$$arch $(GO) test -count=1 -run '^$$' -exec true $$pkgs >/dev/null; \
	done; echo "cross: ok ($(CROSS_PLATFORMS))"

# ocb passes GOOS/GOARCH through to `go build`; each platform gets its own
# copy of builder-config.yaml with its own output_path.
cross-otelcol: $(OCB)
	@set -e; mkdir -p build/cross; for p in $(CROSS_OTELCOL_PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; out=build/$(OTELCOL_NAME)-$$os-$$arch; \
		sed "s#^\(  output_path:\).*#\1 ./$$out#" $(OTELCOL_CONFIG) > build/cross/builder-config-$$os-$$arch.yaml; \
		echo "ocb GOOS=$$os GOARCH=$$arch -> $$out"; \
		GOOS=$$os GOARCH=$$arch $(OCB) --config build/cross/builder-config-$$os-$$arch.yaml; \
	done

ocb: $(OCB)

$(OCB):
	GOBIN=$(OCB_DIR) $(GO) install go.opentelemetry.io/collector/cmd/builder@$(OCB_VERSION)

clean:
	rm -rf $(OTELCOL_DIR) build/cross $(foreach p,$(CROSS_OTELCOL_PLATFORMS),build/$(OTELCOL_NAME)-$(subst /,-,$(p)))

kube-apiserver: $(KUBE_APISERVER)

# ~17 CPU-minutes and 2.4 GB peak cold; the binary is written last (go build -o to a
# temporary name, then mv), so an interrupted build leaves nothing behind.
$(KUBE_APISERVER):
	@echo "building kube-apiserver $(KUBE_VERSION) into $(KUBE_APISERVER_DIR) (about 17 CPU-minutes cold)"
	mkdir -p $(KUBE_APISERVER_DIR)
	cd tools/kube-apiserver && CGO_ENABLED=0 $(GO) build -trimpath \
		-ldflags='-s -w -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37' \
		-o $(KUBE_APISERVER).tmp k8s.io/kubernetes/cmd/kube-apiserver
	mv $(KUBE_APISERVER).tmp $(KUBE_APISERVER)

kustomize: $(KUSTOMIZE)

$(KUSTOMIZE):
	cd / && GOBIN=$(KUSTOMIZE_DIR) $(GO) install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

etcd: $(ETCD)

# Debian's etcd-server, unpacked (dpkg-deb -x) rather than installed, so no
# service starts; the tests start it on loopback ports of their own.
$(ETCD):
	rm -rf $(ETCD_DIR).tmp && mkdir -p $(ETCD_DIR).tmp
	cd $(ETCD_DIR).tmp && apt-get download etcd-server && dpkg-deb -x etcd-server_*.deb .
	rm -rf $(ETCD_DIR) && mv $(ETCD_DIR).tmp $(ETCD_DIR)
