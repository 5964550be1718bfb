// An empty stand-in for contrib's pkg/semconvtest, which
// processor/k8sattributesprocessor v1.3.1 requires but imports only from a
// test file, and which the module proxy serves at no version. builder-config.yaml
// replaces the module with this directory; nothing in the collector imports it.
module github.com/open-telemetry/opentelemetry-collector-contrib/pkg/semconvtest

go 1.26.0
