# tcprtt — eBPF TCP RTT receiver for the OpenTelemetry Collector.
#
#   make otelcol        build build/otelcol-tcprtt/otelcol-tcprtt with ocb from builder-config.yaml
#   sudo make run       build it and run it with testdata/otelcol-debug.yaml (needs root for BPF)
#   make run SUDO=sudo  same, but build as you and only run the collector with sudo
#   make e2e            end-to-end test (as root; builds the collector if needed)

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

.DEFAULT_GOAL := otelcol

.PHONY: otelcol run e2e ocb clean

# Always hand over to ocb: it regenerates the sources and `go build` is incremental (~seconds warm).
otelcol: $(OCB)
	cd $(CURDIR) && $(OCB) --config $(OTELCOL_CONFIG)

run: otelcol
	$(SUDO) $(OTELCOL) --config $(RUN_CONFIG)

e2e: otelcol
	TCPRTT_OTELCOL=$(CURDIR)/$(OTELCOL) TCPRTT_REQUIRE_BPF=1 $(GO) test -count=1 -v ./internal/e2e/

ocb: $(OCB)

$(OCB):
	GOBIN=$(OCB_DIR) $(GO) install go.opentelemetry.io/collector/cmd/builder@$(OCB_VERSION)

clean:
	rm -rf $(OTELCOL_DIR)
