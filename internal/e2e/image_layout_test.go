//go:build linux

package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The OCI image of `make image` (tools/image), read with the standard
// library only: the layout tarball's index.json names one image index (the
// multi-platform image), which names one manifest per platform.

// imageTarball returns TCPRTT_IMAGE, which `make e2e` sets after `make
// image`. Unset, the image tests are skipped: they belong to make e2e, not
// to make test (CI runs each suite once).
func imageTarball(t *testing.T) string {
	t.Helper()
	p := os.Getenv("TCPRTT_IMAGE")
	if p == "" {
		t.Skip("TCPRTT_IMAGE unset: `make e2e` builds the image (make image) and runs this test")
	}
	_, err := os.Stat(p)
	require.NoError(t, err, "TCPRTT_IMAGE: run `make image`")
	return p
}

type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
	Platform    *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
	} `json:"platform"`
}

type ociIndex struct {
	Manifests []ociDescriptor `json:"manifests"`
}

type ociManifest struct {
	Config ociDescriptor   `json:"config"`
	Layers []ociDescriptor `json:"layers"`
}

type ociConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Created      string `json:"created"`
	Config       struct {
		User       string   `json:"User"`
		Entrypoint []string `json:"Entrypoint"`
		Cmd        []string `json:"Cmd"`
	} `json:"config"`
}

// ociLayout is the files of a layout tarball by path.
type ociLayout map[string][]byte

func readLayout(t *testing.T, path string) ociLayout {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	files := ociLayout{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err, "read %s", path)
		if h.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			require.NoError(t, err)
			files[h.Name] = data
		}
	}
	return files
}

// blob returns a blob and checks that its content matches its digest.
func (l ociLayout) blob(t *testing.T, d ociDescriptor) []byte {
	t.Helper()
	hexDigest, ok := strings.CutPrefix(d.Digest, "sha256:")
	require.True(t, ok, "digest %q", d.Digest)
	data, ok := l["blobs/sha256/"+hexDigest]
	require.True(t, ok, "blob %s missing from the layout", d.Digest)
	sum := sha256.Sum256(data)
	require.Equal(t, hexDigest, hex.EncodeToString(sum[:]), "blob %s content", d.Digest)
	require.EqualValues(t, d.Size, len(data), "blob %s size", d.Digest)
	return data
}

func (l ociLayout) decode(t *testing.T, d ociDescriptor, v any) {
	t.Helper()
	require.NoError(t, json.Unmarshal(l.blob(t, d), v), "decode %s (%s)", d.Digest, d.MediaType)
}

// imageIndex returns the descriptor of the multi-platform index (the
// layout's only entry) and its manifests.
func (l ociLayout) imageIndex(t *testing.T) (ociDescriptor, ociIndex) {
	t.Helper()
	var top ociIndex
	require.NoError(t, json.Unmarshal(l["index.json"], &top), "index.json")
	require.Len(t, top.Manifests, 1, "index.json: one multi-platform image")
	d := top.Manifests[0]
	require.Equal(t, "application/vnd.oci.image.index.v1+json", d.MediaType)
	var idx ociIndex
	l.decode(t, d, &idx)
	return d, idx
}

// layerFiles returns the regular files of a gzipped layer with their headers.
func layerFiles(t *testing.T, data []byte) map[string]*tar.Header {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	require.NoError(t, err)
	out := map[string]*tar.Header{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		require.NoError(t, err)
		out[h.Name] = h
	}
}

func layerFile(t *testing.T, data []byte, name string) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	require.NoError(t, err)
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		require.NoError(t, err, "%s not in the layer", name)
		if h.Name == name {
			b, err := io.ReadAll(tr)
			require.NoError(t, err)
			return b
		}
	}
}

// TestImageLayout checks the layout `make image` wrote: amd64 and arm64
// images whose collector is a static, stripped ELF of that machine, a base
// with the CA bundle and /tmp and no shell, the config the DaemonSet
// expects; and that tools/image gives the same digest again from the same
// binaries (its part of the reproducibility; the Go build's is -trimpath,
// -buildvcs=false and an empty build id).
func TestImageLayout(t *testing.T) {
	tarball := imageTarball(t)
	l := readLayout(t, tarball)
	indexDesc, idx := l.imageIndex(t)
	ref := indexDesc.Annotations["org.opencontainers.image.ref.name"]
	require.NotEmpty(t, ref, "index.json: the image's org.opencontainers.image.ref.name")
	if tag := os.Getenv("TCPRTT_IMAGE_TAG"); tag != "" {
		assert.Equal(t, "otelcol-tcprtt:"+tag, ref, "ref name: otelcol-tcprtt:IMAGE_TAG")
	}

	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	binaries := map[string][]byte{}
	var epoch string
	for _, md := range idx.Manifests {
		require.NotNil(t, md.Platform, "manifest %s without platform", md.Digest)
		arch := md.Platform.Architecture
		t.Run(md.Platform.OS+"/"+arch, func(t *testing.T) {
			var m ociManifest
			l.decode(t, md, &m)
			var cfg ociConfig
			l.decode(t, m.Config, &cfg)
			assert.Equal(t, "linux", cfg.OS)
			assert.Equal(t, arch, cfg.Architecture)
			assert.Equal(t, []string{"/otelcol-tcprtt"}, cfg.Config.Entrypoint)
			assert.Equal(t, []string{"--config=/etc/otelcol-tcprtt/config.yaml"}, cfg.Config.Cmd)
			assert.Equal(t, "0:0", cfg.Config.User, "uid 0, as the DaemonSet runs it")
			epoch = cfg.Created
			require.Len(t, m.Layers, 2, "base and collector layers")

			base := layerFiles(t, l.blob(t, m.Layers[0]))
			for _, f := range []string{"etc/ssl/certs/ca-certificates.crt", "etc/passwd", "etc/group"} {
				assert.Contains(t, base, f)
			}
			if h := base["tmp/"]; assert.NotNil(t, h, "/tmp") {
				assert.EqualValues(t, 0o1777, h.Mode&0o7777, "/tmp mode")
			}
			app := layerFiles(t, l.blob(t, m.Layers[1]))
			for name := range mergeKeys(base, app) {
				assert.False(t, strings.HasPrefix(name, "bin/") || strings.HasSuffix(name, "/sh"), "no shell in the image: %s", name)
			}
			h := app["otelcol-tcprtt"]
			require.NotNil(t, h, "/otelcol-tcprtt")
			assert.EqualValues(t, 0o755, h.Mode&0o7777, "runs as any uid")
			assert.Equal(t, 0, h.Uid)

			bin := layerFile(t, l.blob(t, m.Layers[1]), "otelcol-tcprtt")
			binaries[arch] = bin
			ef, err := elf.NewFile(bytes.NewReader(bin))
			require.NoError(t, err, "the %s collector is an ELF file", arch)
			want, ok := machines[arch]
			require.True(t, ok, "unexpected platform %s", arch)
			assert.Equal(t, want, ef.Machine, "the %s image's collector is built for %s", arch, want)
			assert.Nil(t, ef.Section(".symtab"), "stripped (-s): no symbol table")
			for _, p := range ef.Progs {
				assert.NotEqual(t, elf.PT_INTERP, p.Type, "static: no program interpreter")
			}
			t.Logf("%s: manifest %s, collector %d bytes, %s", arch, md.Digest, len(bin), ef.Machine)
		})
	}
	require.Len(t, binaries, 2, "linux/amd64 and linux/arm64")

	t.Run("reproducible", func(t *testing.T) {
		dir := t.TempDir()
		created, err := parseRFC3339Unix(epoch)
		require.NoError(t, err, "config created %q", epoch)
		args := []string{"run", ".", "-tag", strings.TrimPrefix(ref, "otelcol-tcprtt:"),
			"-layout", filepath.Join(dir, "oci"), "-tarball", filepath.Join(dir, "image.tar")}
		for _, arch := range []string{"amd64", "arm64"} {
			p := writeFileIn(t, dir, "otelcol-tcprtt-"+arch, binaries[arch], 0o755)
			args = append(args, "-binary", "linux/"+arch+"="+p)
		}
		cmd := exec.Command(goTool(t), args...)
		cmd.Dir = filepath.Join(repoRoot(t), "tools", "image")
		cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH="+strconv.FormatInt(created, 10))
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "tools/image again:\n%s", out)
		again, _ := readLayout(t, filepath.Join(dir, "image.tar")).imageIndex(t)
		assert.Equal(t, indexDesc.Digest, again.Digest, "same binaries and time, same index digest")
		t.Logf("index %s (built twice)", again.Digest)
	})
}

func mergeKeys[V any](ms ...map[string]V) map[string]bool {
	out := map[string]bool{}
	for _, m := range ms {
		for k := range m {
			out[k] = true
		}
	}
	return out
}

func goTool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/local/go/bin/go"); err == nil {
		return "/usr/local/go/bin/go"
	}
	t.Fatal("go not found in PATH or /usr/local/go/bin")
	return ""
}

func parseRFC3339Unix(s string) (int64, error) {
	ts, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return 0, fmt.Errorf("created: %w", err)
	}
	return ts.Unix(), nil
}
